//! The Hopper lightning indexer's index math (`csrc/sm90/indexer/indexer_fast.cuh`) compiled for
//! the host and checked against independent formulations: the shared-memory regions, the CTA
//! scheduler by brute force, the top-k's key order against `f32::total_cmp`, and two emulations of
//! the kernels' data flow built from the header (the logits through the swizzled tiles,
//! descriptors and fragment maps; the top-k through the histogram, candidates and bitmaps)
//! against a naive score loop and a sort. The swizzle, descriptor, accumulator map and mbarrier
//! ring it builds on are the common ones, tested in `sm90_layout.rs`. Needs a C++ compiler
//! (`c++`); skips without one.

mod host_cpp;

use flashseek::fp8::E4M3_TO_F32;
use flashseek::kv_layout::{IndexFp8, PAGE};

const HEADER: &str = "#include \"sm90/indexer/indexer_fast.cuh\"\n#include <cstdio>\n#include <cstring>\n#include \
                      <vector>\n#include <cmath>\nusing namespace flashseek::indexer_fast;\n";

/// xorshift64*: the tests' data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn run(name: &str, body: &str) -> Option<Vec<u64>> {
    host_cpp::run(name, &format!("{HEADER}{body}")).map(|out| host_cpp::numbers(&out))
}

#[test]
fn shared_memory_regions_are_aligned_and_disjoint() {
    let Some(got) = run(
        "ix_smem",
        "int main() { std::printf(\"%u %u \", LogitsSmem::q, kQBytes); for (unsigned s = 0; s < kStages; ++s) \
         std::printf(\"%u %u %u %u \", LogitsSmem::codes(s), kPageCodeBytes, LogitsSmem::scales(s), kPageScaleBytes); \
         std::printf(\"%u %u %u %u %u %u \", LogitsSmem::hist, kGroupRows * kBins * 4, LogitsSmem::barriers, 2 * \
         kStages * 8, LogitsSmem::bytes, LogitsSmem::dynamic_bytes); std::printf(\"%u %u %u\", TopkSmem::bytes(163840), \
         TopkSmem::tied(100), TopkSmem::selected); }\n",
    ) else {
        return;
    };
    let (regions, rest) = got.split_at(2 + 8 * 4 + 2);
    let mut spans: Vec<(u64, u64)> = regions.chunks_exact(2).map(|r| (r[0], r[0] + r[1])).collect();
    // Operand tiles on the swizzle atom, scales 16-byte aligned (bulk copies), barriers 8.
    assert_eq!(spans[0].0 % 1024, 0);
    for s in 0..8 {
        assert_eq!(spans[1 + 2 * s].0 % 1024, 0);
        assert_eq!(spans[2 + 2 * s].0 % 16, 0);
    }
    assert_eq!(rest[0] % 8, 0, "barriers");
    spans.push((rest[0], rest[0] + rest[1]));
    spans.sort();
    for w in spans.windows(2) {
        assert!(w[0].1 <= w[1].0, "{w:?} overlap");
    }
    assert_eq!(spans.last().map(|s| s.1), Some(rest[2]));
    // The logits kernel's and the top-k's (at 160k positions) fit the 227 KB a CTA may have.
    assert!(rest[3] <= 227 * 1024 && rest[4] <= 227 * 1024);
    assert_eq!(rest[5], rest[6] + 4 * 4, "100 positions take 4 words");
}

#[test]
fn scheduler_covers_every_page_of_every_group_once() {
    let mut rng = Rng(0x1d3a_5eed);
    for case in 0..40 {
        let groups = 1 + rng.below(if case % 4 == 0 { 3 } else { 40 }) as usize;
        let per_split = 1 + rng.below(if case % 3 == 0 { 2 } else { 40 }) as u32;
        // Positions of each group's last row: decode-like, page edges, long prefill.
        let pos: Vec<u32> = (0..groups)
            .map(|_| match rng.below(4) {
                0 => rng.below(64) as u32,
                1 => (64 * (1 + rng.below(30)) - rng.below(2)) as u32,
                _ => rng.below(5000) as u32,
            })
            .collect();
        let pos_list = pos.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ");
        let body = format!(
            "int main() {{ const unsigned pos[] = {{{pos_list}}}; const unsigned g = {groups}, per = {per_split}; \
             std::vector<unsigned> start(g + 1, 0); for (unsigned i = 0; i < g; ++i) start[i + 1] = start[i] + \
             splits_for(pages_for(pos[i]), per); for (unsigned cta = 0; cta < start[g]; ++cta) {{ unsigned gr = \
             find_group(start.data(), g, cta); unsigned sp = cta - start[gr]; std::printf(\"%u %u %u \", gr, \
             split_begin(sp, per), split_end(sp, per, pages_for(pos[gr]))); }} }}\n"
        );
        let Some(got) = run(&format!("ix_sched_{case}"), &body) else { return };
        let mut covered: Vec<Vec<u32>> = pos.iter().map(|&p| vec![0; p as usize / PAGE + 1]).collect();
        let mut ctas = 0;
        for w in got.chunks_exact(3) {
            let (g, b, e) = (w[0] as usize, w[1] as usize, w[2] as usize);
            assert!(b < e && e - b <= per_split as usize, "case {case}: split [{b}, {e}) of group {g}");
            for page in &mut covered[g][b..e] {
                *page += 1;
            }
            ctas += 1;
        }
        assert!(covered.iter().flatten().all(|&c| c == 1), "case {case}: a page not covered exactly once");
        let want: usize = pos.iter().map(|&p| (p as usize / PAGE + 1).div_ceil(per_split as usize)).sum();
        assert_eq!(ctas, want, "case {case}: CTAs");
    }
}

#[test]
fn pages_are_the_cache_layout() {
    let pages = [0u64, 1, 2, 63, 64, 1000, 1 << 22];
    let list = pages.iter().map(|p| format!("{p}ull")).collect::<Vec<_>>().join(", ");
    let Some(got) = run(
        "ix_pages",
        &format!(
            "int main() {{ const unsigned long long pages[] = {{{list}}}; for (auto p : pages) std::printf(\"%zu %zu \
             \", page_codes(p), page_scales(p)); }}\n"
        ),
    ) else {
        return;
    };
    let ix = IndexFp8::new(128, flashseek::fp8::ScaleFmt::Exact).expect("dim 128");
    let want: Vec<u64> =
        pages.iter().flat_map(|&p| [ix.key(p as usize * PAGE) as u64, ix.scales(p as usize * PAGE) as u64]).collect();
    assert_eq!(got, want);
    // The TMA's view: page p's row r at p * page_bytes + 128 r; its scales right after the codes.
    assert_eq!(ix.page_bytes(), 64 * 128 + 64 * 4);
    assert_eq!(ix.key(5 * PAGE + 7), 5 * ix.page_bytes() + 7 * 128);
}

/// Special values, both zeros, NaNs of both signs, subnormals, and random bit patterns.
fn interesting_floats(rng: &mut Rng) -> Vec<f32> {
    let mut v = vec![
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        f32::from_bits(0x7f80_0001),
        f32::from_bits(0xff80_0001),
        f32::MIN_POSITIVE,
        -f32::MIN_POSITIVE,
        f32::from_bits(1),
        f32::from_bits(0x8000_0001),
        f32::MAX,
        f32::MIN,
        1.0,
        -1.0,
    ];
    v.extend((0..400).map(|_| f32::from_bits(rng.next() as u32)));
    v.extend((0..100).map(|_| (rng.below(2000) as f32 - 1000.0) / 7.0));
    v
}

#[test]
fn order_keys_sort_as_total_cmp_and_digits_recompose_them() {
    let mut rng = Rng(0x0bde_4c3e);
    let xs = interesting_floats(&mut rng);
    let list = xs.iter().map(|x| format!("{}u", x.to_bits())).collect::<Vec<_>>().join(", ");
    let Some(got) = run(
        "ix_order",
        &format!(
            "int main() {{ const unsigned xs[] = {{{list}}}; for (unsigned x : xs) {{ unsigned k = order_key(x); \
             std::printf(\"%u %u %u %u \", k, hist_bin(k), refine_digit(k, 0), refine_digit(k, 1)); }} \
             std::printf(\"%u %u %u %u %u\", kHistShift, kRefineShift0, refine_bins(0), refine_bins(1), \
             refine_mask(0)); }}\n"
        ),
    ) else {
        return;
    };
    let (entries, consts) = got.split_at(got.len() - 5);
    let (hist_shift, shift0) = (consts[0], consts[1]);
    assert_eq!((consts[2], consts[3]), (1 << (hist_shift - shift0), 1 << shift0));
    assert_eq!(consts[4], !((1u64 << shift0) - 1) & 0xffff_ffff);
    let keys: Vec<u64> = entries.chunks_exact(4).map(|e| e[0]).collect();
    for (e, x) in entries.chunks_exact(4).zip(&xs) {
        // The bin and the two digits are the key's bits, top to bottom.
        assert_eq!(e[1] << hist_shift | e[2] << shift0 | e[3], e[0], "{x:e}");
        assert!(e[1] < 2048 && e[2] < consts[2] && e[3] < consts[3]);
    }
    for (i, a) in xs.iter().enumerate() {
        for (j, b) in xs.iter().enumerate() {
            assert_eq!(keys[i].cmp(&keys[j]), a.total_cmp(b), "{a:e} vs {b:e}");
        }
    }
}

#[test]
fn threshold_is_the_bin_of_the_wanted_rank() {
    let mut rng = Rng(0x7e5e_1d01);
    let mut body = String::from("int main() {\n");
    let mut cases = Vec::new();
    for case in 0..30 {
        let bins = [2048usize, 1024, 16][case % 3];
        let hist: Vec<u32> = (0..bins)
            .map(|_| if rng.below(4) == 0 { rng.below(if case % 2 == 0 { 3 } else { 1000 }) as u32 } else { 0 })
            .collect();
        let total: u64 = hist.iter().map(|&h| h as u64).sum();
        if total == 0 {
            continue;
        }
        let want = 1 + rng.below(total) as u32;
        let list = hist.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(", ");
        body += &format!(
            "  {{ const unsigned h[] = {{{list}}}; Threshold t = find_threshold(h, {bins}, {want}); std::printf(\"%u \
             %u \", t.bin, t.above); }}\n"
        );
        cases.push((hist, want));
    }
    body += "}\n";
    let Some(got) = run("ix_threshold", &body) else { return };
    for ((hist, want), t) in cases.iter().zip(got.chunks_exact(2)) {
        let (bin, above) = (t[0] as usize, t[1] as u32);
        let brute: u32 = hist[bin + 1..].iter().sum();
        assert_eq!(above, brute);
        assert!(above < *want && *want <= above + hist[bin], "bin {bin} for rank {want}");
    }
}

/// The simple kernels' and the CPU's selection: the k largest by `total_cmp`, ties to the earlier
/// position, ascending; all positions then -1s when there are at most k.
fn select_top(scores: &[f32], k: usize) -> Vec<i64> {
    if scores.len() <= k {
        return (0..k).map(|j| if j < scores.len() { j as i64 } else { -1 }).collect();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut keep: Vec<i64> = order[..k].iter().map(|&t| t as i64).collect();
    keep.sort_unstable();
    keep
}

/// The top-k kernel's steps, sequentially, with the header's functions: the logits kernel's
/// histogram, the threshold bin, the one pass over the row, the refinement, the ties in position
/// order and the ascending scan of the selected bitmap.
const TOPK_EMULATION: &str = r#"
static std::vector<long long> topk(const std::vector<unsigned>& bits, unsigned k, unsigned& fallback) {
    const unsigned n = bits.size();
    std::vector<long long> out(k, -1);
    if (n <= k) { for (unsigned j = 0; j < n; ++j) out[j] = j; return out; }
    std::vector<unsigned> hist(kBins, 0);
    for (unsigned t = 0; t < n; ++t) ++hist[hist_bin(order_key(bits[t]))];
    const Threshold th = find_threshold(hist.data(), kBins, k);
    const unsigned bin = th.bin;
    unsigned want = k - th.above;
    fallback += hist[bin] > kCandidates;
    std::vector<unsigned> selected(bitmap_words(n), 0), tied(bitmap_words(n), 0);
    std::vector<unsigned> cand_key, cand_pos;
    for (unsigned t = 0; t < n; ++t) {
        const unsigned key = order_key(bits[t]);
        if (hist_bin(key) > bin) selected[t / 32] |= 1u << (t % 32);
        else if (hist_bin(key) == bin) { cand_key.push_back(key); cand_pos.push_back(t); }
    }
    unsigned prefix = bin << kHistShift;
    unsigned mask = ~((1u << kHistShift) - 1u);
    for (unsigned pass = 0; pass < 2; ++pass) {
        std::vector<unsigned> h(refine_bins(pass), 0);
        for (unsigned key : cand_key) if ((key & mask) == prefix) ++h[refine_digit(key, pass)];
        const Threshold r = find_threshold(h.data(), refine_bins(pass), want);
        prefix |= r.bin << (pass == 0 ? kRefineShift0 : 0u);
        mask = refine_mask(pass);
        want -= r.above;
    }
    for (size_t i = 0; i < cand_key.size(); ++i) {
        const unsigned t = cand_pos[i];
        if (cand_key[i] > prefix) selected[t / 32] |= 1u << (t % 32);
        else if (cand_key[i] == prefix) tied[t / 32] |= 1u << (t % 32);
    }
    for (unsigned i = 0, kept = 0; i < tied.size(); ++i)
        for (unsigned b = 0; b < 32; ++b)
            if ((tied[i] >> b & 1u) && kept < want) { selected[i] |= 1u << b; ++kept; }
    unsigned at = 0;
    for (unsigned i = 0; i < selected.size(); ++i)
        for (unsigned b = 0; b < 32; ++b)
            if ((selected[i] >> b & 1u) && at < k) out[at++] = i * 32 + b;
    return out;
}
"#;

#[test]
fn topk_emulation_selects_as_the_simple_kernel() {
    let mut rng = Rng(0x70b4_5e1e);
    let mut body = String::from(TOPK_EMULATION);
    body += "int main() { unsigned fallback = 0;\n";
    let mut cases = Vec::new();
    for case in 0..24 {
        let n = match case % 6 {
            0 => 1 + rng.below(40) as usize,
            1 => 2048 + rng.below(3) as usize,
            2 => 20_000,
            _ => 1 + rng.below(12_000) as usize,
        };
        let k = [16usize, 2048, 1, 100][case % 4];
        let scores: Vec<f32> = (0..n)
            .map(|_| match case % 5 {
                // Many exact ties (a few distinct values), the fallback path beyond 8192 of a bin.
                0 => [0.0f32, -0.0, 1.5, 1.5, 1.5][rng.below(5) as usize],
                // Clustered in one bin: equal top bits, random low ones.
                1 => f32::from_bits(0x4000_0000 | rng.below(1 << 19) as u32),
                2 => f32::from_bits(rng.next() as u32),
                _ => (rng.below(100_000) as f32 - 20_000.0) * 1e-3,
            })
            .collect();
        let list = scores.iter().map(|x| format!("{}u", x.to_bits())).collect::<Vec<_>>().join(",");
        body += &format!(
            "{{ std::vector<unsigned> s = {{{list}}}; for (long long v : topk(s, {k}, fallback)) std::printf(\"%lld \", \
             v); std::printf(\"\\n\"); }}\n"
        );
        cases.push((scores, k));
    }
    body += "std::fprintf(stderr, \"fallbacks %u\\n\", fallback); std::printf(\"%u\", fallback); }\n";
    let Some(out) = host_cpp::run("ix_topk", &format!("{HEADER}{body}")) else { return };
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), cases.len() + 1);
    for (i, ((scores, k), line)) in cases.iter().zip(&lines).enumerate() {
        let got: Vec<i64> = line.split_whitespace().map(|w| w.parse().expect("a position")).collect();
        assert_eq!(got, select_top(scores, *k), "case {i}: n {} k {k}", scores.len());
    }
    assert!(lines[cases.len()].trim().parse::<u32>().expect("a count") > 0, "the fallback path is exercised");
}

/// The logits kernel's data flow on the host with the header's functions: a cache of pages laid
/// out by kv_layout, a page table, the TMA's 128-byte-swizzled page tiles and the bulk-copied
/// scales, the queries stored swizzled by hand, the wgmma emulated by reading both operands
/// through their descriptors (the PTX canonical layout) into the fragment map's registers, and
/// the epilogue (weights by column, the quad's butterfly, the key scale).
const LOGITS_EMULATION: &str = r#"
static unsigned wgmma_address(unsigned long long desc, unsigned row, unsigned b) {
    const unsigned start = (desc & 0x3fffu) << 4;
    const unsigned stride = ((desc >> 32) & 0x3fffu) << 4;
    const unsigned a = start + row / 8 * stride + row % 8 * 128 + b;
    return a ^ (((a >> 7) & 7u) << 4);
}

// Scores of rows r < n_rows (at positions pos[r]) of one group against the sequence's pages
// 0..pages_for(max pos), the table mapping them to cache pages; smem is one CTA's.
static void logits(const float* e4m3, const unsigned char* cache, const unsigned* table, unsigned n_rows,
                   const unsigned* pos, unsigned heads, const unsigned char* q, const float* w_eff,
                   std::vector<std::vector<float>>& out) {
    const unsigned base = 1024;
    std::vector<unsigned char> smem(base + LogitsSmem::bytes, 0);
    for (unsigned n = 0; n < kN; ++n)
        for (unsigned c = 0; c < kDim / 16; ++c)
            for (unsigned b = 0; b < 16; ++b) {
                const unsigned r = n / kHeads, h = n % kHeads;
                smem[base + LogitsSmem::q + swizzle_128b(n, c * 16 + b)] =
                    r < n_rows && h < heads ? q[(r * heads + h) * kDim + c * 16 + b] : 0;
            }
    unsigned max_pos = 0;
    for (unsigned r = 0; r < n_rows; ++r) max_pos = pos[r] > max_pos ? pos[r] : max_pos;
    for (unsigned j = 0; j < pages_for(max_pos); ++j) {
        const unsigned s = ring_stage(j, kStages);
        const unsigned page = table[j];
        for (unsigned row = 0; row < kKeys; ++row)
            for (unsigned b = 0; b < kDim; ++b)
                smem[base + LogitsSmem::codes(s) + swizzle_128b(row * 128 + b)] = cache[page_codes(page) + row * kDim + b];
        std::memcpy(&smem[base + LogitsSmem::scales(s)], cache + page_scales(page), kPageScaleBytes);
        const unsigned long long desc_k = k_major_sw128_desc(base + LogitsSmem::codes(s));
        const unsigned long long desc_q = k_major_sw128_desc(base + LogitsSmem::q);
        float v[4][32][2][kGroupRows];
        for (unsigned warp = 0; warp < 4; ++warp)
            for (unsigned lane = 0; lane < 32; ++lane) {
                float d[kAccRegs];
                for (unsigned i = 0; i < kAccRegs; ++i) {
                    float acc = 0.0f;
                    for (unsigned k = 0; k < kKSteps; ++k)
                        for (unsigned b = 0; b < kMmaK; ++b)
                            acc += e4m3[smem[wgmma_address(desc_advance_k(desc_k, k), frag_row(32 * warp + lane, i), b)]] *
                                   e4m3[smem[wgmma_address(desc_advance_k(desc_q, k), frag_col(32 * warp + lane, i), b)]];
                    d[i] = acc;
                }
                for (unsigned half = 0; half < 2; ++half)
                    for (unsigned r = 0; r < kGroupRows; ++r) {
                        float sum = 0.0f;
                        for (unsigned jj = 0; jj < kHeads / 8; ++jj)
                            for (unsigned e = 0; e < 2; ++e) {
                                const unsigned h = frag_col(32 * warp + lane, frag_index(0, jj, e));
                                const float w = r < n_rows && h < heads ? w_eff[r * heads + h] : 0.0f;
                                const float x = d[frag_index(half, r * (kHeads / 8) + jj, e)];
                                sum = std::fma(w, x > 0.0f ? x : 0.0f, sum);
                            }
                        v[warp][lane][half][r] = sum;
                    }
            }
        for (unsigned warp = 0; warp < 4; ++warp)
            for (unsigned lane = 0; lane < 32; ++lane)
                for (unsigned half = 0; half < 2; ++half)
                    for (unsigned r = 0; r < n_rows; ++r) {
                        const unsigned q0 = lane & ~3u;
                        const float a = v[warp][q0][half][r] + v[warp][q0 + 1][half][r];
                        const float c = v[warp][q0 + 2][half][r] + v[warp][q0 + 3][half][r];
                        const unsigned key = frag_row(32 * warp + lane, 2 * half);
                        float scale;
                        std::memcpy(&scale, &smem[base + LogitsSmem::scales(s) + 4 * key], 4);
                        const unsigned t = j * kKeys + key;
                        if (t <= pos[r] && (lane & 3u) == 0) out[r][t] = (a + c) * scale + 0.0f;
                    }
    }
}
"#;

#[test]
fn logits_emulation_is_the_naive_score() {
    let ix = IndexFp8::new(128, flashseek::fp8::ScaleFmt::Exact).expect("dim 128");
    let mut rng = Rng(0x10_6175);
    let code = |rng: &mut Rng| loop {
        // Any e4m3 code but the NaNs.
        let c = rng.below(256) as u8;
        if c & 0x7f != 0x7f {
            return c;
        }
    };
    for case in 0..4 {
        let heads = [64usize, 5, 64, 33][case];
        let n_rows = [2usize, 1, 2, 2][case];
        let pos: Vec<usize> = match case {
            0 => vec![130, 131],
            1 => vec![63],
            2 => vec![200, 64],
            _ => vec![0, 70],
        };
        let pages = pos.iter().max().expect("a row") / PAGE + 1;
        // Cache pages in a shuffled order, with one page no row reads.
        let n_cache = pages + 1;
        let mut table: Vec<usize> = (0..n_cache).collect();
        for i in (1..n_cache).rev() {
            table.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let mut cache = vec![0u8; n_cache * ix.page_bytes()];
        let mut keys = vec![[0u8; 128]; pages * PAGE];
        let mut kscale = vec![0f32; pages * PAGE];
        for t in 0..pages * PAGE {
            let slot = table[t / PAGE] * PAGE + t % PAGE;
            for b in 0..128 {
                keys[t][b] = code(&mut rng);
                cache[ix.key(slot) + b] = keys[t][b];
            }
            kscale[t] = (1 + rng.below(1000)) as f32 / 4096.0;
            cache[ix.scales(slot)..ix.scales(slot) + 4].copy_from_slice(&kscale[t].to_le_bytes());
        }
        let q: Vec<u8> = (0..n_rows * heads * 128).map(|_| code(&mut rng)).collect();
        let w_eff: Vec<f32> = (0..n_rows * heads).map(|_| (rng.below(2001) as f32 - 1000.0) / 8192.0).collect();

        let join = |v: Vec<String>| v.join(",");
        let table_list = join(table.iter().map(|t| t.to_string()).collect());
        let pos_list = join(pos.iter().map(|t| t.to_string()).collect());
        let body = format!(
            "{LOGITS_EMULATION}\nstatic const float e4m3[256] = {{{}}};\nstatic const unsigned char cache[] = {{{}}};\n\
             static const unsigned char q[] = {{{}}};\nstatic const float w_eff[] = {{{}}};\nint main() {{ const \
             unsigned table[] = {{{table_list}}}; const unsigned pos[] = {{{pos_list}}}; \
             std::vector<std::vector<float>> out({n_rows}, std::vector<float>({}, 0.0f)); logits(e4m3, cache, table, \
             {n_rows}, pos, {heads}, q, w_eff, out); for (unsigned r = 0; r < {n_rows}; ++r) for (unsigned t = 0; t <= \
             pos[r]; ++t) {{ unsigned b; std::memcpy(&b, &out[r][t], 4); std::printf(\"%u \", b); }} }}\n",
            join(E4M3_TO_F32.iter().map(|v| if v.is_nan() { "0.0f".into() } else { format!("{v:e}f") }).collect()),
            join(cache.iter().map(|b| b.to_string()).collect()),
            join(q.iter().map(|b| b.to_string()).collect()),
            join(w_eff.iter().map(|v| format!("{v:e}f")).collect()),
            pages * PAGE,
        );
        let Some(got) = run(&format!("ix_logits_{case}"), &body) else { return };
        let mut it = got.iter();
        let mut worst = 0f64;
        for (r, &p) in pos.iter().enumerate() {
            for t in 0..=p {
                let g = f32::from_bits(*it.next().expect("a score") as u32) as f64;
                // f64 naive: exact products of e4m3 values, summed per head, ReLU, weights.
                let (mut s, mut mag) = (0f64, 0f64);
                for h in 0..heads {
                    let qh = &q[(r * heads + h) * 128..][..128];
                    let dot: f64 = qh
                        .iter()
                        .zip(&keys[t])
                        .map(|(&a, &b)| E4M3_TO_F32[a as usize] as f64 * E4M3_TO_F32[b as usize] as f64)
                        .sum();
                    let w = w_eff[r * heads + h] as f64;
                    s += w * dot.max(0.0);
                    mag += (w * dot.max(0.0)).abs();
                }
                s *= kscale[t] as f64;
                mag *= kscale[t] as f64;
                // f32 sums of 128 products, then of 64 weighted heads: a few hundred roundings
                // of at most 2^-24 of the magnitudes summed.
                let err = (g - s).abs() / mag.max(f64::MIN_POSITIVE);
                worst = worst.max(err);
                assert!(err <= 512.0 * f32::EPSILON as f64, "case {case} row {r} t {t}: {g} vs {s}");
            }
        }
        assert!(it.next().is_none());
        eprintln!("logits emulation case {case}: worst error {worst:e} of the magnitudes summed");
    }
}
