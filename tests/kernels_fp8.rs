//! `flashseek::fp8` (the FP8 numerics every backend shares) against the reference in
//! `tests/reference`: e4m3 rounding, DeepSeek's activation scales and the per-group round trip,
//! all compared bit for bit.
//!
//! These tests are what allows the other kernel tests to trust FP8 rounding: the reference
//! rounding (`reference::round_e4m3`, nearest of all e4m3fn codes, ties to the even code) and
//! `flashseek::fp8::round_e4m3` are shown equal here on a dense grid of the whole ±448 range,
//! exhaustively around every rounding boundary and on random floats incl. subnormals. (The
//! references of the other families still use their own rounding, not `flashseek::fp8`.)

mod common;
mod reference;

use flashseek::fp8::{self, ScaleFmt, E4M3_TO_F32};
use proptest::prelude::*;
use reference as rf;

fn fmt_strategy() -> impl Strategy<Value = ScaleFmt> {
    prop_oneof![Just(ScaleFmt::Exact), Just(ScaleFmt::Ue8m0)]
}

/// Panics at the first value where the kernel's rounding differs from the reference's.
fn check_round(x: f32) {
    let got = fp8::round_e4m3(x);
    let want = rf::round_e4m3(x);
    assert!(
        got.to_bits() == want.to_bits(),
        "round_e4m3({x:e} = {:#010x}): got {got:e} ({:#010x}), want {want:e} ({:#010x})",
        x.to_bits(),
        got.to_bits(),
        want.to_bits()
    );
}

#[test]
fn decode_table_matches_the_reference_decoder() {
    for (code, &v) in E4M3_TO_F32.iter().enumerate() {
        match rf::e4m3_value(code as u8) {
            None => assert!(v.is_nan(), "code {code:#04x} should be NaN, table has {v}"),
            Some(want) => {
                assert!(v.to_bits() == (want as f32).to_bits(), "code {code:#04x}: table {v:e}, want {want:e}")
            }
        }
    }
}

#[test]
fn round_e4m3_on_a_dense_grid() {
    let max_bits = 448.0f32.to_bits();
    let mut n = 0u64;
    // Every 512th f32 of [0, 448] (2048 per e4m3 interval), both signs.
    for bits in (0..=max_bits).step_by(512) {
        let x = f32::from_bits(bits);
        check_round(x);
        check_round(-x);
        n += 2;
    }
    // Exhaustively within 256 ulps of every code and of every midpoint between adjacent codes.
    let mut codes: Vec<f32> = (0u8..0x7f).filter_map(rf::e4m3_value).map(|v| v as f32).collect();
    codes.sort_by(|a, b| a.total_cmp(b));
    let mut centers = codes.clone();
    centers.extend(codes.windows(2).map(|w| ((f64::from(w[0]) + f64::from(w[1])) / 2.0) as f32));
    for c in centers {
        let b = c.to_bits();
        for bits in b.saturating_sub(256)..=(b + 256).min(max_bits) {
            let x = f32::from_bits(bits);
            check_round(x);
            check_round(-x);
            n += 2;
        }
    }
    println!("[round_e4m3 dense grid] {n} values bit-exact");
}

#[test]
fn round_e4m3_random() {
    let max_bits = 448.0f32.to_bits();
    let value = prop_oneof![
        // Anywhere in ±448 (uniform over the bit patterns: all binades equally).
        (0..=max_bits, any::<bool>()),
        // f32 subnormals and the e4m3 subnormal range.
        (0u32..0x0080_0000, any::<bool>()),
        (0x3800_0000u32..0x3d00_0000, any::<bool>()),
    ]
    .prop_map(|(b, neg)| if neg { -f32::from_bits(b) } else { f32::from_bits(b) });
    rf::run("round_e4m3 random", 256, prop::collection::vec(value, 1..512), |xs, t| {
        for &x in &xs {
            check_round(x);
        }
        t.count("values bit-exact", xs.len() as u64);
        Ok(())
    });
}

#[test]
fn group_scale_exact_and_ue8m0() {
    let amax = prop_oneof![
        Just(0.0f32),
        // Below the 1e-4 floor.
        (0.0f32..1e-4),
        // Anywhere from tiny to huge (positive bit patterns up to 1e30).
        (0..=1e30f32.to_bits()).prop_map(f32::from_bits),
        // Amaxes whose exact scale is (nearly) a power of two: 448 · 2^k, and one ulp around.
        (-20i32..20, -1i32..=1)
            .prop_map(|(e, d)| f32::from_bits((448.0 * 2f32.powi(e)).to_bits().wrapping_add_signed(d))),
    ];
    rf::run("group_scale", 2048, amax, |a, t| {
        let exact = fp8::group_scale(a, ScaleFmt::Exact);
        let want = a.max(1e-4) * (1.0f32 / 448.0);
        prop_assert_eq!(exact.to_bits(), want.to_bits(), "Exact scale of amax {:e}", a);
        let ue = fp8::group_scale(a, ScaleFmt::Ue8m0);
        let want = rf::act_scale(a, ScaleFmt::Ue8m0);
        prop_assert_eq!(ue.to_bits(), want.to_bits(), "Ue8m0 scale of amax {:e}: got {:e} want {:e}", a, ue, want);
        t.count("scales bit-exact", 2);
        Ok(())
    });
}

#[test]
fn round_trip_row_with_partial_groups() {
    let strategy = (1usize..700, prop_oneof![Just(128usize), 1usize..300], fmt_strategy(), any::<u64>());
    rf::run("round_trip_row", 256, strategy, |(len, group, fmt, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let mut row = rng.activations(1, len);
        // Some exact zeros, negative zeros and values that land exactly on ±448 after scaling.
        for _ in 0..len / 16 {
            let i = rng.below(len);
            row[i] = [0.0, -0.0, 448.0, -1e-7][rng.below(4)];
        }
        let want = rf::round_trip(&row, group, fmt);
        let mut got = row.clone();
        fp8::round_trip_row(&mut got, group, fmt);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            prop_assert!(
                g.to_bits() == w.to_bits(),
                "value {i} ({:e}) of a {len}-row in groups of {group} ({fmt:?}): got {g:e}, want {w:e}",
                row[i]
            );
        }
        t.count("values bit-exact", len as u64);
        Ok(())
    });
    // The reference's own sanity: e4m3 values with amax 448 have the ue8m0 scale 1 and round
    // trip unchanged.
    let row: Vec<f32> = vec![448.0, 1.0, -0.5, 0.001953125, -0.0];
    let back = rf::round_trip(&row, 128, ScaleFmt::Ue8m0);
    assert_eq!(
        back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        row.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}
