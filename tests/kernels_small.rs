//! Small ops of the CPU backend against the references in `tests/reference`: `silu_mul`,
//! `add_assign`, `fp8_round`, `hadamard`, `argmax`, and the row copies of the paged cache
//! (`kv_store`, `kv_gather`, `copy_rows`); bad shapes and out-of-range slots must be errors,
//! never panics.

mod common;
mod reference;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::*;
use flashseek::backend::cpu::CpuCache;
use flashseek::backend::{Backend, CpuBackend};
use flashseek::fp8::ScaleFmt;
use flashseek::tensor::{CacheTensor, Tensor};
use proptest::prelude::*;
use reference as rf;

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Tensor<CpuBackend> {
    Tensor::<CpuBackend>::from_vec(rows, cols, data).expect("tensor")
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|v| v.to_bits()).collect()
}

fn fmt_strategy() -> impl Strategy<Value = ScaleFmt> {
    prop_oneof![Just(ScaleFmt::Exact), Just(ScaleFmt::Ue8m0)]
}

#[test]
fn silu_mul_and_add_assign() {
    let b = CpuBackend::new();
    let strategy = (1usize..40, prop_oneof![1usize..8, 8usize..700], any::<u64>());
    rf::run("silu_mul / add_assign", 64, strategy, |(rows, cols, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let mut g = rng.activations(rows, cols);
        // Saturating gates on both sides.
        for _ in 0..cols / 8 {
            let i = rng.below(rows * cols);
            g[i] = [-100.0, -30.0, 30.0, 100.0][rng.below(4)];
        }
        let u = rng.activations(rows, cols);
        let mut gt = tensor(rows, cols, g.clone());
        b.silu_mul(&mut gt, &tensor(rows, cols, u.clone())).expect("silu_mul");
        let want: Vec<f64> = g.iter().zip(&u).map(|(&g, &u)| rf::silu(f64::from(g)) * f64::from(u)).collect();
        // Relative to each row's size, with a floor of 1e-30 per value: silu(-100) = -3.7e-42
        // underflows in f32 (exp(100) = inf) and a row holding only that value would otherwise
        // count as a 100% error.
        let mag: Vec<f64> = want.iter().map(|w| w.abs() + 1e-30).collect();
        let (r, norm) =
            rf::assert_close_to_magnitude(&format!("silu_mul [{rows}x{cols}]"), gt.data(), &want, &mag, cols, 1e-6);
        t.record("silu_mul (rel err of a row of one underflowing value counts 1)", &r);
        t.record_value("silu_mul error / (|value| + 1e-30)", norm, format!("{norm:.3e}"));

        let mut acc = tensor(rows, cols, g.clone());
        b.add_assign(&mut acc, &tensor(rows, cols, u.clone())).expect("add_assign");
        // One f32 rounding of the exact sum.
        let want: Vec<f32> = g.iter().zip(&u).map(|(&a, &b)| (f64::from(a) + f64::from(b)) as f32).collect();
        prop_assert_eq!(bits(acc.data()), bits(&want), "add_assign");
        t.count("add_assign values bit-exact", want.len() as u64);

        // Mismatched shapes are errors.
        prop_assert!(b.silu_mul(&mut gt, &tensor(rows, cols + 1, vec![0.0; rows * (cols + 1)])).is_err());
        prop_assert!(b.add_assign(&mut acc, &tensor(rows + 1, cols, vec![0.0; (rows + 1) * cols])).is_err());
        Ok(())
    });
}

#[test]
fn fp8_round_segments_and_partial_groups() {
    let b = CpuBackend::new();
    let segment = prop_oneof![1 => 1usize..8, 3 => 8usize..300, 1 => Just(128usize), 1 => Just(512usize)];
    let strategy = (1usize..40, segment, 1usize..4, fmt_strategy(), any::<u64>());
    rf::run("fp8_round", 64, strategy, |(rows, segment, nseg, fmt, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let cols = segment * nseg;
        let x = rng.activations(rows, cols);
        let mut xt = tensor(rows, cols, x.clone());
        b.fp8_round(&mut xt, segment, fmt).expect("fp8_round");
        // Every segment of every row on its own, in 128-groups from the segment's left.
        let want: Vec<f32> = x.chunks(segment).flat_map(|s| rf::round_trip(s, rf::BLOCK, fmt)).collect();
        for (i, (g, w)) in xt.data().iter().zip(&want).enumerate() {
            prop_assert!(
                g.to_bits() == w.to_bits(),
                "fp8_round [{rows}x{cols}] segment {segment} {fmt:?}: value {i} ({:e}) got {g:e} want {w:e}",
                x[i]
            );
        }
        t.count("values bit-exact", want.len() as u64);
        // A segment that does not divide the row, or an empty one, is an error.
        if segment > 1 {
            prop_assert!(b.fp8_round(&mut xt, segment * nseg + 1, fmt).is_err());
        }
        prop_assert!(b.fp8_round(&mut xt, 0, fmt).is_err());
        Ok(())
    });
}

#[test]
fn hadamard_matches_sylvester_and_is_an_involution() {
    let b = CpuBackend::new();
    let strategy = (0u32..9, 1usize..4, 1usize..40, any::<u64>());
    rf::run("hadamard", 64, strategy, |(log_dim, nseg, rows, seed), t| {
        let dim = 1usize << log_dim;
        let cols = dim * nseg;
        let mut rng = rf::Rng::new(seed);
        let x = rng.activations(rows, cols);
        let mut xt = tensor(rows, cols, x.clone());
        b.hadamard(&mut xt, dim).expect("hadamard");
        let want = rf::hadamard(&x, dim);
        // Compared per segment (the transform is per segment).
        let r = assert_close(&format!("hadamard dim {dim} [{rows}x{cols}]"), xt.data(), &want, dim, 1e-6);
        t.record(&format!("H x, dim {dim}"), &r);
        b.hadamard(&mut xt, dim).expect("hadamard");
        let r = assert_close(&format!("hadamard twice dim {dim}"), xt.data(), &to_f64(&x), dim, 1e-6);
        t.record("H H x = x", &r);
        Ok(())
    });
    // Dimensions that are not a power of two, or do not divide the row, are errors.
    for (dim, cols) in [(0usize, 8usize), (3, 6), (6, 12), (12, 24), (100, 200), (8, 12), (256, 128)] {
        let mut x = tensor(2, cols, vec![1.0; 2 * cols]);
        assert!(b.hadamard(&mut x, dim).is_err(), "hadamard dim {dim} of rows of {cols} returned Ok");
    }
}

#[test]
fn argmax_first_on_ties() {
    let b = CpuBackend::new();
    let strategy = (1usize..20, prop_oneof![1usize..8, 8usize..300, Just(2048usize)], 1u32..6, any::<u64>());
    rf::run("argmax", 128, strategy, |(rows, cols, levels, seed), t| {
        let mut rng = rf::Rng::new(seed);
        // Few distinct values, so the maximum is usually tied; -inf and huge values too.
        let x: Vec<f32> = (0..rows * cols)
            .map(|_| match rng.below(20) {
                0 => f32::NEG_INFINITY,
                1 => -3.0e38,
                _ => rng.below(levels as usize) as f32 - 2.0,
            })
            .collect();
        let got = b.argmax(&tensor(rows, cols, x.clone())).expect("argmax");
        prop_assert_eq!(got, rf::argmax(&x, cols));
        t.count("rows exact", rows as u64);
        Ok(())
    });
    assert!(b.argmax(&tensor(3, 0, vec![])).is_err(), "argmax of rows with no columns returned Ok");
}

/// An f32 cache's values.
fn values(c: &CacheTensor<CpuBackend>) -> &[f32] {
    match c.storage() {
        CpuCache::F32(v) => v,
        CpuCache::Bytes(_) => panic!("an f32 cache holds bytes"),
    }
}

fn cache(rows: usize, cols: usize, data: Vec<f32>) -> CacheTensor<CpuBackend> {
    CacheTensor::from_f32(rows, cols, data).expect("cpu cache")
}

#[test]
fn kv_store_gather_copy_rows_exact() {
    let b = CpuBackend::new();
    let strategy = (1usize..300, 1usize..80, 1usize..40, 1usize..100, any::<u64>());
    rf::run("kv_store / kv_gather / copy_rows", 64, strategy, |(slots_n, cache_cols, n_src, extra_cols, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let n_src = n_src.min(slots_n);
        let cache0 = rng.normals(slots_n * cache_cols, 1.0);
        // A row = all of `head`, then `rest` columns of `tail` from column `col`.
        let h = rng.below(cache_cols + 1);
        let rest = cache_cols - h;
        let tail_cols = rest + rng.below(extra_cols);
        let col = rng.below(tail_cols - rest + 1);
        let head = rng.normals(n_src * h, 1.0);
        let tail = rng.normals(n_src * tail_cols, 1.0);
        // Distinct slots (a slot written twice in one call holds its last row).
        let mut all: Vec<u32> = (0..slots_n as u32).collect();
        rng.shuffle(&mut all);
        let slots = all[..n_src].to_vec();

        let mut c = cache(slots_n, cache_cols, cache0.clone());
        let (headt, tailt) = (tensor(n_src, h, head.clone()), tensor(n_src, tail_cols, tail.clone()));
        let tail_arg = (rest > 0).then_some((&tailt, col));
        b.kv_store(&mut c, &slots, &headt, tail_arg).expect("kv_store");
        let mut want = cache0.clone();
        for (i, &s) in slots.iter().enumerate() {
            let row = &mut want[s as usize * cache_cols..(s as usize + 1) * cache_cols];
            row[..h].copy_from_slice(&head[i * h..(i + 1) * h]);
            row[h..].copy_from_slice(&tail[i * tail_cols + col..i * tail_cols + col + rest]);
        }
        prop_assert_eq!(bits(values(&c)), bits(&want), "kv_store");

        // Gather any slots (repeats allowed) from any column.
        let w = 1 + rng.below(cache_cols);
        let gcol = rng.below(cache_cols - w + 1);
        let g_slots: Vec<u32> = (0..1 + rng.below(50)).map(|_| rng.below(slots_n) as u32).collect();
        let mut dst = tensor(g_slots.len(), w, vec![f32::NAN; g_slots.len() * w]);
        b.kv_gather(&c, &g_slots, gcol, &mut dst).expect("kv_gather");
        let want_g: Vec<f32> = g_slots
            .iter()
            .flat_map(|&s| want[s as usize * cache_cols + gcol..s as usize * cache_cols + gcol + w].to_vec())
            .collect();
        prop_assert_eq!(bits(dst.data()), bits(&want_g), "kv_gather");

        // copy_rows between tensors of the same width.
        let wantt = tensor(slots_n, cache_cols, want.clone());
        let rows_n = rng.below(slots_n + 1);
        let src_row = rng.below(slots_n - rows_n + 1);
        let dst_rows = rows_n + rng.below(10);
        let dst_row = rng.below(dst_rows - rows_n + 1);
        let dst0 = rng.normals(dst_rows * cache_cols, 1.0);
        let mut dstt = tensor(dst_rows, cache_cols, dst0.clone());
        b.copy_rows(&wantt, src_row, &mut dstt, dst_row, rows_n).expect("copy_rows");
        let mut want_c = dst0.clone();
        want_c[dst_row * cache_cols..(dst_row + rows_n) * cache_cols]
            .copy_from_slice(&want[src_row * cache_cols..(src_row + rows_n) * cache_cols]);
        prop_assert_eq!(bits(dstt.data()), bits(&want_c), "copy_rows");
        t.count("cases bit-exact", 1);

        // Bad slots and shapes are errors and leave the cache alone.
        let before = bits(values(&c));
        let mut bad = slots.clone();
        bad[rng.below(n_src)] = (slots_n + rng.below(5)) as u32;
        prop_assert!(b.kv_store(&mut c, &bad, &headt, tail_arg).is_err(), "kv_store slot out of range");
        if rest > 0 {
            prop_assert!(b.kv_store(&mut c, &slots, &headt, None).is_err(), "kv_store without its tail");
            let far = Some((&tailt, tail_cols - rest + 1));
            prop_assert!(b.kv_store(&mut c, &slots, &headt, far).is_err(), "kv_store tail columns");
        } else {
            prop_assert!(b.kv_store(&mut c, &slots, &headt, Some((&tailt, 0))).is_err(), "kv_store with a tail");
        }
        let wide = tensor(n_src, cache_cols + 1, vec![0.0; n_src * (cache_cols + 1)]);
        prop_assert!(b.kv_store(&mut c, &slots, &wide, None).is_err(), "kv_store head wider than the cache");
        prop_assert!(b.kv_store(&mut c, &slots[1..], &headt, tail_arg).is_err(), "kv_store slot count");
        prop_assert_eq!(bits(values(&c)), before, "a failed kv_store wrote to the cache");
        let mut bad_g = g_slots.clone();
        bad_g[0] = slots_n as u32;
        prop_assert!(b.kv_gather(&c, &bad_g, gcol, &mut dst).is_err(), "kv_gather slot out of range");
        prop_assert!(b.kv_gather(&c, &g_slots, cache_cols - w + 1, &mut dst).is_err(), "kv_gather columns");
        prop_assert!(b.kv_gather(&c, &g_slots, usize::MAX, &mut dst).is_err(), "kv_gather columns overflow");
        prop_assert!(b.kv_gather(&c, &g_slots[1..], gcol, &mut dst).is_err() || g_slots.len() == 1, "kv_gather count");
        prop_assert!(b.copy_rows(&wantt, slots_n - rows_n + 1, &mut dstt, dst_row, rows_n).is_err(), "copy_rows src");
        prop_assert!(b.copy_rows(&wantt, src_row, &mut dstt, dst_rows - rows_n + 1, rows_n).is_err(), "copy_rows dst");
        let mut narrow = tensor(dst_rows, cache_cols + 1, vec![0.0; dst_rows * (cache_cols + 1)]);
        prop_assert!(b.copy_rows(&wantt, src_row, &mut narrow, dst_row, rows_n).is_err(), "copy_rows width");
        Ok(())
    });
}

/// Runs `f`, failing the test with `what` if it panics (an `Err` or `Ok` are both fine).
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Option<String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(_) => None,
        Err(e) => {
            let msg = e.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| e.downcast_ref::<String>().cloned());
            Some(format!("{what}: panicked ({})", msg.unwrap_or_default()))
        }
    }
}

/// Zero-width tensors (legal: `zeros(rows, 0)`) must give an error or do nothing, not panic.
#[test]
fn zero_width_tensors_do_not_panic() {
    let b = CpuBackend::new();
    let mut failures = Vec::new();
    let mut check = |what: &str, r: Option<String>| failures.extend(r.into_iter().inspect(|_| println!("{what}")));
    check(
        "kv_store from a [2, 0] src",
        no_panic("kv_store from a [2, 0] src", || {
            let mut c = cache(4, 3, vec![0.0; 12]);
            b.kv_store(&mut c, &[0, 1], &tensor(2, 0, vec![]), None)
        }),
    );
    check(
        "kv_store into a [4, 0] cache",
        no_panic("kv_store into a [4, 0] cache", || {
            let mut c = cache(4, 0, vec![]);
            b.kv_store(&mut c, &[0, 1], &tensor(2, 3, vec![0.0; 6]), None)
        }),
    );
    check(
        "kv_gather into a [2, 0] dst",
        no_panic("kv_gather into a [2, 0] dst", || {
            let c = cache(4, 3, vec![0.0; 12]);
            b.kv_gather(&c, &[0, 1], 0, &mut tensor(2, 0, vec![]))
        }),
    );
    check(
        "kv_gather from a [4, 0] cache",
        no_panic("kv_gather from a [4, 0] cache", || {
            let c = cache(4, 0, vec![]);
            b.kv_gather(&c, &[0, 1], 0, &mut tensor(2, 0, vec![]))
        }),
    );
    check(
        "fp8_round of [2, 0]",
        no_panic("fp8_round of [2, 0]", || b.fp8_round(&mut tensor(2, 0, vec![]), 4, ScaleFmt::Exact)),
    );
    check("hadamard of [2, 0]", no_panic("hadamard of [2, 0]", || b.hadamard(&mut tensor(2, 0, vec![]), 4)));
    check(
        "silu_mul of [3, 0]",
        no_panic("silu_mul of [3, 0]", || b.silu_mul(&mut tensor(3, 0, vec![]), &tensor(3, 0, vec![]))),
    );
    assert!(failures.is_empty(), "{} panics on zero-width tensors:\n{}", failures.len(), failures.join("\n"));
}
