//! FP8 e4m3 (the `e4m3fn` variant: no infinities, max 448) and DeepSeek's activation scaling.
//!
//! These are the numerics every backend shares: the CPU kernels call them directly, the CUDA
//! kernels implement the same arithmetic and are tested against them.

/// Largest finite e4m3fn magnitude.
pub const E4M3_MAX: f32 = 448.0;

/// The smallest activation amax a scale is derived from, as DeepSeek's `act_quant` clamps it.
const AMAX_FLOOR: f32 = 1e-4;

/// How an activation group's scale is derived from its absolute maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleFmt {
    /// `amax / 448`.
    Exact,
    /// `amax / 448` rounded up to a power of two (`scale_fmt: ue8m0`).
    Ue8m0,
}

/// Decoded value of every e4m3fn byte (0x7f and 0xff are NaN).
pub static E4M3_TO_F32: [f32; 256] = build_e4m3_table();

const fn build_e4m3_table() -> [f32; 256] {
    let mut t = [0.0f32; 256];
    let mut b = 0;
    while b < 256 {
        let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
        let exp = ((b >> 3) & 0xf) as i32;
        let man = (b & 0x7) as f32;
        let mag = if exp == 0xf && (b & 0x7) == 0x7 {
            f32::NAN
        } else if exp == 0 {
            man * (1.0 / 512.0)
        } else {
            (1.0 + man / 8.0) * pow2(exp - 7)
        };
        t[b] = sign * mag;
        b += 1;
    }
    t
}

const fn pow2(e: i32) -> f32 {
    f32::from_bits(((e + 127) as u32) << 23)
}

/// Rounds `x` (already within ±448) to the nearest e4m3 value, ties to even.
#[inline]
pub fn round_e4m3(x: f32) -> f32 {
    let a = x.abs();
    let r = if a < 1.0 / 64.0 {
        // Subnormal range: a fixed quantum of 2^-9.
        (a * 512.0).round_ties_even() * (1.0 / 512.0)
    } else {
        // Keep 3 mantissa bits, round to nearest even on the 20 dropped ones.
        let bits = a.to_bits();
        let rounded = bits + 0x7_ffff + ((bits >> 20) & 1);
        f32::from_bits(rounded & !0xf_ffff)
    };
    r.copysign(x)
}

/// The scale DeepSeek's `act_quant` uses for a group whose absolute maximum is `amax`.
#[inline]
pub fn group_scale(amax: f32, fmt: ScaleFmt) -> f32 {
    let s = amax.max(AMAX_FLOOR) * (1.0 / E4M3_MAX);
    match fmt {
        ScaleFmt::Exact => s,
        ScaleFmt::Ue8m0 => {
            // 2^ceil(log2 s) from the bits, as the reference kernel computes it.
            let bits = s.to_bits();
            let exp = ((bits >> 23) & 0xff) as i32 - 127 + i32::from(bits & 0x7f_ffff != 0);
            pow2(exp)
        }
    }
}

/// The e4m3fn code nearest `x` (within ±448; ties to even), sign of zero kept, NaN as 0x7f or
/// 0xff: the byte [`E4M3_TO_F32`] maps back to [`round_e4m3`]`(x)`.
pub fn e4m3_code(x: f32) -> u8 {
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    if x.is_nan() {
        return sign | 0x7f;
    }
    let a = round_e4m3(x).abs();
    let mag = if a < 1.0 / 64.0 {
        // Subnormals (and 2^-6, code 8) are multiples of 2^-9 whose code is that multiple.
        (a * 512.0) as u8
    } else {
        let bits = a.to_bits();
        ((((bits >> 23) - 120) << 3) | ((bits >> 20) & 7)) as u8
    };
    sign | mag
}

/// Quantizes one group to e4m3 with `scale` and returns the dequantized values in place.
#[inline]
pub fn round_trip_group(group: &mut [f32], scale: f32) {
    for v in group {
        *v = round_e4m3((*v / scale).clamp(-E4M3_MAX, E4M3_MAX)) * scale;
    }
}

/// Rounds `row` through e4m3 in groups of `group` from the left (the last may be partial), each
/// with its own scale: the precision an FP8 consumer of these activations sees.
pub fn round_trip_row(row: &mut [f32], group: usize, fmt: ScaleFmt) {
    for g in row.chunks_mut(group) {
        let amax = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        round_trip_group(g, group_scale(amax, fmt));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_the_format_landmarks() {
        assert_eq!(E4M3_TO_F32[0x7e], 448.0);
        assert_eq!(E4M3_TO_F32[0xfe], -448.0);
        assert_eq!(E4M3_TO_F32[0x01], 1.0 / 512.0);
        assert_eq!(E4M3_TO_F32[0x08], 1.0 / 64.0);
        assert_eq!(E4M3_TO_F32[0x38], 1.0);
        assert!(E4M3_TO_F32[0x7f].is_nan());
    }

    #[test]
    fn every_finite_code_rounds_to_itself() {
        for (b, &v) in E4M3_TO_F32.iter().enumerate() {
            if v.is_finite() {
                assert_eq!(round_e4m3(v), v, "code {b:#x}");
            }
        }
    }

    #[test]
    fn every_code_is_the_code_of_its_value() {
        for c in 0..=255u8 {
            let v = E4M3_TO_F32[c as usize];
            if v.is_nan() {
                assert_eq!(e4m3_code(v) & 0x7f, 0x7f, "code {c:#x}");
            } else {
                assert_eq!(e4m3_code(v), c, "code {c:#x}");
            }
        }
        assert_eq!(e4m3_code(448.0), 0x7e);
        assert_eq!(e4m3_code(-0.0), 0x80);
        assert_eq!(e4m3_code(1.0 / 1024.0), 0x00, "half the smallest subnormal ties to even zero");
        assert_eq!(e4m3_code(3.0 / 1024.0), 0x02);
    }

    #[test]
    fn ue8m0_scales_are_powers_of_two_at_least_exact() {
        for amax in [1e-5f32, 1e-4, 0.3, 1.0, 448.0, 449.0, 1e6] {
            let e = group_scale(amax, ScaleFmt::Exact);
            let p = group_scale(amax, ScaleFmt::Ue8m0);
            assert_eq!(p.to_bits() & 0x7f_ffff, 0);
            assert!(p >= e && p < 2.0 * e, "{amax}: {p} vs {e}");
        }
    }
}
