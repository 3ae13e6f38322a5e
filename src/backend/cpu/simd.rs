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

    /// One element of `dots`: eight lanes over `d`, summed pairwise, then the tail.
    fn dot8(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0.0f32; 8];
        let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
        let tail = ca.remainder().iter().zip(cb.remainder()).fold(0.0f32, |t, (x, y)| x * y + t);
        for (x, y) in ca.zip(cb) {
            for l in 0..8 {
                acc[l] += x[l] * y[l];
            }
        }
        let s: [f32; 4] = std::array::from_fn(|l| acc[l] + acc[l + 4]);
        let (s0, s1) = (s[0] + s[2], s[1] + s[3]);
        (s0 + s1) + tail
    }

    pub fn dots(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
        let nb = b.len() / d;
        for (i, ra) in a.chunks_exact(d).enumerate() {
            for (j, rb) in b.chunks_exact(d).enumerate() {
                out[i * nb + j] = dot8(ra, rb);
            }
        }
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

    #[target_feature(enable = "avx2,fma")]
    unsafe fn tail(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0.0f32, |t, (x, y)| x.mul_add(*y, t))
    }

    /// One element of `dots`, in the order every element of it uses.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn dot8(a: &[f32], b: &[f32], d8: usize) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut k = 0;
        while k < d8 {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(a.as_ptr().add(k)), _mm256_loadu_ps(b.as_ptr().add(k)), acc);
            k += 8;
        }
        hsum(acc) + tail(&a[d8..], &b[d8..])
    }

    /// # Safety
    /// The CPU supports AVX2 and FMA; `a` and `b` hold whole rows of `d` values and `out` has
    /// room for every pair.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dots(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
        let (na, nb) = (a.len() / d, b.len() / d);
        let d8 = d / 8 * 8;
        let row = |m: &[f32], r: usize| m.as_ptr().add(r * d);
        let mut i = 0;
        while i < na {
            let mut j = 0;
            if i + 4 <= na {
                // 4 rows of a against 2 of b: eight independent accumulators, each element
                // still summed exactly as `dot8` sums it.
                while j + 2 <= nb {
                    let mut acc = [_mm256_setzero_ps(); 8];
                    let mut k = 0;
                    while k < d8 {
                        let y0 = _mm256_loadu_ps(row(b, j).add(k));
                        let y1 = _mm256_loadu_ps(row(b, j + 1).add(k));
                        for r in 0..4 {
                            let x = _mm256_loadu_ps(row(a, i + r).add(k));
                            acc[2 * r] = _mm256_fmadd_ps(x, y0, acc[2 * r]);
                            acc[2 * r + 1] = _mm256_fmadd_ps(x, y1, acc[2 * r + 1]);
                        }
                        k += 8;
                    }
                    for r in 0..4 {
                        let ra = &a[(i + r) * d..(i + r + 1) * d];
                        for c in 0..2 {
                            let rb = &b[(j + c) * d..(j + c + 1) * d];
                            out[(i + r) * nb + j + c] = hsum(acc[2 * r + c]) + tail(&ra[d8..], &rb[d8..]);
                        }
                    }
                    j += 2;
                }
                if j < nb {
                    // The last row of b against the 4 rows of a.
                    let mut acc = [_mm256_setzero_ps(); 4];
                    let mut k = 0;
                    while k < d8 {
                        let y = _mm256_loadu_ps(row(b, j).add(k));
                        for (r, acc) in acc.iter_mut().enumerate() {
                            *acc = _mm256_fmadd_ps(_mm256_loadu_ps(row(a, i + r).add(k)), y, *acc);
                        }
                        k += 8;
                    }
                    let rb = &b[j * d..(j + 1) * d];
                    for (r, acc) in acc.iter().enumerate() {
                        let ra = &a[(i + r) * d..(i + r + 1) * d];
                        out[(i + r) * nb + j] = hsum(*acc) + tail(&ra[d8..], &rb[d8..]);
                    }
                }
                i += 4;
            } else {
                for jj in 0..nb {
                    out[i * nb + jj] = dot8(&a[i * d..(i + 1) * d], &b[jj * d..(jj + 1) * d], d8);
                }
                i += 1;
            }
        }
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

    /// Eight e4m3 codes as f16 bits worth 2^-8 times their value (subnormals included): with
    /// the code in the high byte of each 16-bit lane, an arithmetic shift right by one puts the
    /// sign, exponent and mantissa where f16 keeps them. NaN codes become an f16 NaN.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn e4m3x8(p: *const u8) -> __m256 {
        let high = _mm_unpacklo_epi8(_mm_setzero_si128(), _mm_loadl_epi64(p as *const __m128i));
        let bits = _mm_and_si128(_mm_srai_epi16(high, 1), _mm_set1_epi16(0xbf80u16 as i16));
        let mag = _mm_set1_epi16(0x3f80);
        let nan = _mm_cmpeq_epi16(_mm_and_si128(bits, mag), mag);
        _mm256_cvtph_ps(_mm_or_si128(bits, _mm_and_si128(nan, _mm_set1_epi16(0x7e00))))
    }

    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn decode_e4m3(codes: &[u8], scale: f32, out: &mut [f32]) {
        let n = codes.len().min(out.len());
        let s = _mm256_set1_ps(scale * 256.0);
        let mut i = 0;
        while i + 8 <= n {
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_mul_ps(e4m3x8(codes.as_ptr().add(i)), s));
            i += 8;
        }
        portable::decode_e4m3(&codes[i..n], scale, &mut out[i..n]);
    }

    /// `Σ_b scales[b] · Σ x[i]·e4m3(codes[i])` over blocks of `block` values, decoding in
    /// registers.
    ///
    /// # Safety
    /// The CPU supports AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_e4m3(x: &[f32], codes: &[u8], scales: &[f32], block: usize) -> f32 {
        let n = codes.len().min(x.len());
        let mut total = _mm256_setzero_ps();
        let mut tail = 0.0f32;
        for (b, &s) in scales.iter().enumerate().take(n.div_ceil(block)) {
            let (start, end) = (b * block, ((b + 1) * block).min(n));
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut i = start;
            while i + 16 <= end {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let w = e4m3x8(codes.as_ptr().add(i + 8 * j));
                    *acc = _mm256_fmadd_ps(_mm256_loadu_ps(x.as_ptr().add(i + 8 * j)), w, *acc);
                }
                i += 16;
            }
            // f16 exponents are biased by 15, e4m3's by 7.
            total = _mm256_fmadd_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_set1_ps(s * 256.0), total);
            tail += s * x[i..end].iter().zip(&codes[i..end]).map(|(x, &c)| x * portable::e4m3(c)).sum::<f32>();
        }
        hsum(total) + tail
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

/// `out[i·nb + j] = a_i · b_j` for the `d`-wide rows of `a` and the `nb` rows of `b`. Every
/// element is summed in the same order, whatever its place in the matrices, so a pair of rows
/// scores the same in any batch.
pub fn dots(a: &[f32], b: &[f32], d: usize, out: &mut [f32]) {
    assert!(d > 0 && a.len() % d == 0 && b.len() % d == 0 && out.len() == a.len() / d * (b.len() / d));
    dispatch!(dots(a, b, d, out))
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

/// `Σ_b scales[b] · Σ x[i]·e4m3(codes[i])` over blocks of `block` values (the last may be
/// partial): one row of an FP8 block-scaled GEMM.
#[inline]
pub fn dot_e4m3(x: &[f32], codes: &[u8], scales: &[f32], block: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked above).
        return unsafe { avx2::dot_e4m3(x, codes, scales, block) };
    }
    x.chunks(block)
        .zip(codes.chunks(block))
        .zip(scales)
        .map(|((x, c), s)| s * x.iter().zip(c).map(|(x, &c)| x * portable::e4m3(c)).sum::<f32>())
        .sum()
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
            let scales: Vec<f32> = (0..c.len().div_ceil(40)).map(|b| 0.5 + b as f32).collect();
            let want: f32 =
                xs.iter().zip(&finite).enumerate().map(|(i, (x, &c))| scales[i / 40] * x * portable::e4m3(c)).sum();
            let got = dot_e4m3(&xs, &finite, &scales, 40);
            assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "dot_e4m3 {n}: {got} vs {want}");

            let (qa, kb) = (values(5 * n), values(3 * n + 7));
            if n > 0 {
                let mut got = vec![0.0; 15];
                dots(&qa, &kb[..3 * n], n, &mut got);
                for (e, g) in got.iter().enumerate() {
                    let (i, j) = (e / 3, e % 3);
                    let want = portable::dot(&qa[i * n..(i + 1) * n], &kb[j * n..(j + 1) * n]);
                    assert!((g - want).abs() <= 1e-4 * want.abs().max(1.0), "dots {n} ({i}, {j})");
                    // Equal rows score equally wherever they sit.
                    let mut one = [0.0];
                    dots(&qa[i * n..(i + 1) * n], &kb[j * n..(j + 1) * n], n, &mut one);
                    assert_eq!(one[0], *g, "dots {n} ({i}, {j}) alone vs blocked");
                }
            }

            let bytes: Vec<u8> = values(n).iter().flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes()).collect();
            let (mut got, mut want) = (vec![0.0; n], vec![0.0; n]);
            decode_bf16(&bytes, &mut got);
            portable::decode_bf16(&bytes, &mut want);
            assert_eq!(got, want, "decode_bf16 {n}");
        }
    }
}
