//! The inner loops of the CPU kernels: dot products, axpy and weight decoding. Each has a
//! portable version and an AVX2/FMA/F16C one picked at run time, so the binary stays portable
//! and uses the machine's full vector width.

use std::sync::OnceLock;

/// Portable versions, also the reference for the vector ones.
mod portable {
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        const LANES: usize = 8;
        let mut acc = [0.0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
        for (x, y) in ca.zip(cb) {
            for i in 0..LANES {
                acc[i] += x[i] * y[i];
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        for (y, x) in y.iter_mut().zip(x) {
            *y += a * x;
        }
    }

    pub fn e4m3(c: u8) -> f32 {
        crate::fp8::E4M3_TO_F32[c as usize]
    }

    pub fn decode_e4m3(codes: &[u8], scale: f32, out: &mut [f32]) {
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = e4m3(c) * scale;
        }
    }

    pub fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
            *o = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::portable;

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        while i + 32 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let x = _mm256_loadu_ps(pa.add(i + 8 * j));
                let y = _mm256_loadu_ps(pb.add(i + 8 * j));
                *acc = _mm256_fmadd_ps(x, y, *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc[0]);
            i += 8;
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        hsum(sum) + portable::dot(&a[i..n], &b[i..n])
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let va = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), v);
            i += 8;
        }
        portable::axpy(&mut y[i..n], a, &x[i..n]);
    }

    /// Eight e4m3 codes to f32 through f16: the code's exponent and mantissa bits placed in an
    /// f16 give the value times 2^-8 (subnormals included), widened by F16C; NaN codes map to
    /// an f16 NaN.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn e4m3x8(p: *const u8, scale: __m256) -> __m256 {
        let c = _mm_cvtepu8_epi16(_mm_loadl_epi64(p as *const __m128i));
        let mag = _mm_and_si128(c, _mm_set1_epi16(0x7f));
        let nan = _mm_cmpeq_epi16(mag, _mm_set1_epi16(0x7f));
        let sign = _mm_slli_epi16(_mm_and_si128(c, _mm_set1_epi16(0x80)), 8);
        let bits = _mm_or_si128(_mm_or_si128(_mm_slli_epi16(mag, 7), sign), _mm_and_si128(nan, _mm_set1_epi16(0x7e00)));
        _mm256_mul_ps(_mm256_cvtph_ps(bits), scale)
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn decode_e4m3(codes: &[u8], scale: f32, out: &mut [f32]) {
        let n = codes.len().min(out.len());
        let s = _mm256_set1_ps(scale * 256.0);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(out.as_mut_ptr().add(i), e4m3x8(codes.as_ptr().add(i), s));
            i += 8;
        }
        portable::decode_e4m3(&codes[i..n], scale, &mut out[i..n]);
    }

    /// `Σ x[i]·e4m3(codes[i])`, decoding in registers.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_e4m3(x: &[f32], codes: &[u8]) -> f32 {
        let n = codes.len().min(x.len());
        let s = _mm256_set1_ps(256.0);
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut i = 0;
        while i + 16 <= n {
            for (j, acc) in acc.iter_mut().enumerate() {
                let w = e4m3x8(codes.as_ptr().add(i + 8 * j), s);
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), w, *acc);
            }
            i += 16;
        }
        let tail: f32 = x[i..n].iter().zip(&codes[i..n]).map(|(x, &c)| x * portable::e4m3(c)).sum();
        hsum(_mm256_add_ps(acc[0], acc[1])) + tail
    }

    /// # Safety
    /// The CPU supports AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
        let n = (bytes.len() / 2).min(out.len());
        let mut i = 0;
        while i + 8 <= n {
            let h = _mm_loadu_si128(bytes.as_ptr().add(2 * i) as *const __m128i);
            let w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_castsi256_ps(w));
            i += 8;
        }
        portable::decode_bf16(&bytes[2 * i..2 * n], &mut out[i..n]);
    }
}

fn has_avx2() -> bool {
    static AVX2: OnceLock<bool> = OnceLock::new();
    *AVX2.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
                && std::arch::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Calls the AVX2 version of a kernel where the CPU has it, the portable one otherwise.
macro_rules! dispatch {
    ($f:ident($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
            return unsafe { avx2::$f($($arg),*) };
        }
        portable::$f($($arg),*)
    }};
}

/// `Σ a[i]·b[i]` over the shorter of the two, accumulated in f32.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dispatch!(dot(a, b))
}

/// `y += a·x` over the shorter of the two.
#[inline]
pub fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    dispatch!(axpy(y, a, x))
}

/// `out[i] = e4m3(codes[i]) · scale`.
#[inline]
pub fn decode_e4m3(codes: &[u8], scale: f32, out: &mut [f32]) {
    dispatch!(decode_e4m3(codes, scale, out))
}

/// `Σ x[i]·e4m3(codes[i])` over the shorter of the two.
#[inline]
pub fn dot_e4m3(x: &[f32], codes: &[u8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
        return unsafe { avx2::dot_e4m3(x, codes) };
    }
    x.iter().zip(codes).map(|(x, &c)| x * portable::e4m3(c)).sum()
}

/// Little-endian bf16 values to f32.
#[inline]
pub fn decode_bf16(bytes: &[u8], out: &mut [f32]) {
    dispatch!(decode_bf16(bytes, out))
}

/// A raw pointer that parallel tasks use to write disjoint parts of one output buffer.
#[derive(Clone, Copy)]
pub struct SharedMut(*mut f32);

// SAFETY: every user writes through it only to ranges no other task touches.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    pub fn new(s: &mut [f32]) -> Self {
        SharedMut(s.as_mut_ptr())
    }

    /// # Safety
    /// `start..start + len` lies inside the buffer this was made from, and no other live
    /// reference covers it.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [f32] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    pub fn ptr(&self) -> *mut f32 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect()
    }

    #[test]
    fn vector_kernels_match_the_portable_ones() {
        let codes: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
        for n in [0, 1, 7, 8, 9, 31, 32, 33, 100, 512] {
            let (a, b) = (values(n), values(n + 3));
            let want = portable::dot(&a, &b[..n]);
            assert!((dot(&a, &b) - want).abs() <= 1e-4 * want.abs().max(1.0), "dot {n}");

            let mut y = values(n);
            let mut y0 = y.clone();
            axpy(&mut y, 0.5, &a);
            portable::axpy(&mut y0, 0.5, &a);
            assert_eq!(y, y0, "axpy {n}");

            let c = &codes[..n.min(codes.len())];
            let (mut got, mut want) = (vec![0.0; c.len()], vec![0.0; c.len()]);
            decode_e4m3(c, 0.25, &mut got);
            portable::decode_e4m3(c, 0.25, &mut want);
            for (g, w) in got.iter().zip(&want) {
                assert!(g == w || (g.is_nan() && w.is_nan()), "decode_e4m3 {n}: {g} vs {w}");
            }
            let xs = values(c.len());
            let finite: Vec<u8> = c.iter().map(|&c| if c & 0x7f == 0x7f { 0 } else { c }).collect();
            let want: f32 = xs.iter().zip(&finite).map(|(x, &c)| x * portable::e4m3(c)).sum();
            assert!((dot_e4m3(&xs, &finite) - want).abs() <= 1e-4 * want.abs().max(1.0), "dot_e4m3 {n}");

            let bytes: Vec<u8> = values(n).iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
            let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
            decode_bf16(&bytes, &mut got);
            portable::decode_bf16(&bytes, &mut want);
            assert_eq!(got, want, "decode_bf16 {n}");
        }
    }
}
