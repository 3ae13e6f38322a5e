//! The Hopper FP8 GEMM's index math (`csrc/sm90/gemm/fp8_gemm.cuh`) compiled for the host and
//! checked against independent formulations: the tile scheduler (every tile once, in the
//! documented raster order, for any grid), the scale addressing, the tile heuristic and
//! shared-memory sizes (against `flashseek::gemm_tiles`), and the kernel's whole data flow run on
//! the host (TMA boxes, swizzled stages, descriptors, fragments, promotion, epilogue) against a
//! naive GEMM. The swizzle, descriptor, fragment map and mbarrier ring it builds on are the common
//! ones, tested in `sm90_layout.rs`.
//! Needs a C++ compiler (`c++`); skips without one.

mod host_cpp;

use std::collections::HashSet;

use flashseek::gemm_tiles::GemmTiles;

const HEADER: &str = "#include \"sm90/gemm/fp8_gemm.cuh\"\n#include <cstdio>\nusing namespace flashseek::fp8_gemm;\n";

/// (m_blocks, n_blocks) of the scheduler cases: one tile, one row of tiles, groups that end
/// narrower than 16, whole groups, and DeepSeek-like grids.
const GRIDS: [(u32, u32); 9] = [(1, 1), (1, 33), (3, 17), (32, 17), (5, 16), (7, 48), (2, 193), (33, 5), (64, 56)];

/// The raster order as documented, built group by group: n-blocks in groups of 16 (the last
/// narrower), each group m-block by m-block, n fastest.
fn raster_order(m_blocks: u32, n_blocks: u32) -> Vec<(u32, u32)> {
    let mut order = Vec::new();
    for first in (0..n_blocks).step_by(16) {
        let width = (n_blocks - first).min(16);
        for mb in 0..m_blocks {
            for j in 0..width {
                order.push((mb, first + j));
            }
        }
    }
    order
}

#[test]
fn scheduler_visits_every_tile_once_in_raster_order() {
    let mut program = format!("{HEADER}int main() {{\n");
    for (mb, nb) in GRIDS {
        program += &format!(
            "  {{ Scheduler s{{{mb}, {nb}}}; std::printf(\"%llu \", (unsigned long long)s.tiles());\n    for \
             (unsigned long long t = 0; t < s.tiles(); ++t) {{ unsigned m, n; s.tile(t, m, n); std::printf(\"%u %u \", \
             m, n); }} }}\n"
        );
    }
    program += "}\n";
    let Some(out) = host_cpp::run("gemm_scheduler", &program) else { return };
    let got = host_cpp::numbers(&out);
    let mut at = 0;
    for (mb, nb) in GRIDS {
        let tiles = (mb * nb) as usize;
        assert_eq!(got[at], tiles as u64, "tiles of {mb}x{nb}");
        at += 1;
        let order: Vec<(u32, u32)> =
            got[at..at + 2 * tiles].chunks_exact(2).map(|p| (p[0] as u32, p[1] as u32)).collect();
        at += 2 * tiles;
        assert_eq!(order, raster_order(mb, nb), "raster order of {mb}x{nb}");
        // Every CTA of any grid takes tiles c, c + grid, ...: together every tile exactly once.
        for grid in [1, 2, 7, 132, tiles, tiles + 5] {
            let mut seen = HashSet::new();
            for c in 0..grid {
                for t in (c..tiles).step_by(grid) {
                    assert!(seen.insert(order[t]), "{mb}x{nb} grid {grid}: tile {:?} twice", order[t]);
                }
            }
            assert_eq!(seen.len(), tiles, "{mb}x{nb} grid {grid}: tiles missed");
        }
    }
    assert_eq!(at, got.len());
}

#[test]
fn scales_are_addressed_per_row_and_weight_block() {
    let mut program = format!("{HEADER}int main() {{\n");
    program += "  std::printf(\"%llu \", (unsigned long long)a_scale_index(2147483647u, 56u, 57u));\n";
    for block_n in [64u32, 128] {
        for n_block in 0..40u32 {
            for kb in [0u32, 3, 56] {
                program += &format!(
                    "  std::printf(\"%llu \", (unsigned long long)b_scale_index({n_block}u, {block_n}u, {kb}u, 57u));\n"
                );
            }
        }
    }
    program += "}\n";
    let Some(out) = host_cpp::run("gemm_scales", &program) else { return };
    let got = host_cpp::numbers(&out);
    // 64-bit: (2^31 - 1) * 57 + 56 does not wrap.
    assert_eq!(got[0], (2_147_483_647u64) * 57 + 56);
    let mut at = 1;
    for block_n in [64u64, 128] {
        for n_block in 0..40u64 {
            for kb in [0u64, 3, 56] {
                // Every column of the tile has its weight scale row col / 128: the tile's.
                for col in n_block * block_n..(n_block + 1) * block_n {
                    assert_eq!(got[at], (col / 128) * 57 + kb, "block_n {block_n} tile {n_block} col {col}");
                }
                at += 1;
            }
        }
    }
}

/// The heuristic and the shared-memory sizes of the header against their Rust twin, on a grid of
/// shapes (the benches', the model's, tiny and ragged ones) and SM counts.
#[test]
fn heuristic_and_smem_match_the_rust_twin() {
    let ms = [0usize, 1, 7, 64, 65, 128, 129, 300, 1024, 4096, 16384];
    let ns = [1usize, 64, 100, 576, 2112, 4096, 7168, 24576, 32768, 129_280];
    let sms = [1usize, 78, 114, 132];
    let mut program = format!("{HEADER}int main() {{\n");
    program += "  for (unsigned i = 0; i < kNumTiles; ++i) { Tiles t = tiles_at(i); unsigned s = stages(t.block_m, \
                t.block_n); std::printf(\"%u %u %u %u %u \", t.block_m, t.block_n, threads(t.block_m), s, \
                smem_bytes(t.block_m, t.block_n, s)); }\n";
    for m in ms {
        for n in ns {
            for sm in sms {
                program += &format!(
                    "  {{ Tiles t = choose({m}u, {n}u, {sm}u); std::printf(\"%u %u \", t.block_m, t.block_n); }}\n"
                );
            }
        }
    }
    program += "}\n";
    let Some(out) = host_cpp::run("gemm_heuristic", &program) else { return };
    let got = host_cpp::numbers(&out);
    for (i, t) in GemmTiles::ALL.iter().enumerate() {
        let want = [t.block_m, t.block_n, t.threads(), t.stages(), t.smem_bytes()];
        let have: Vec<usize> = got[5 * i..5 * i + 5].iter().map(|&v| v as usize).collect();
        assert_eq!(have, want, "{t}");
        assert!(t.smem_bytes() <= flashseek::gemm_tiles::SMEM_LIMIT && t.stages() >= 4, "{t}: {} stages", t.stages());
    }
    let mut at = 5 * GemmTiles::ALL.len();
    for m in ms {
        for n in ns {
            for sm in sms {
                let want = GemmTiles::choose(m, n, sm);
                assert_eq!((got[at] as usize, got[at + 1] as usize), (want.block_m, want.block_n), "{m}x{n} on {sm}");
                at += 2;
            }
        }
    }
    // What it picks at the bench shapes on an H100 (132 SMs): 64 rows where m <= 64.
    assert_eq!(GemmTiles::choose(64, 7168, 132).block_m, 64);
    assert_eq!(GemmTiles::choose(4096, 24576, 132), GemmTiles { block_m: 128, block_n: 128 });
    // The grouped GEMM picks among its 64-row shapes only (the sort's tiles), each compiled.
    for m in ms {
        for n in ns {
            let t = GemmTiles::choose_grouped(m, n, 132);
            assert!(GemmTiles::GROUPED.contains(&t) && GemmTiles::ALL.contains(&t), "{m}x{n}: {t}");
        }
    }
    for t in GemmTiles::ALL {
        assert_eq!(t.to_string().parse::<GemmTiles>().ok(), Some(t));
    }
    assert!("m32n32".parse::<GemmTiles>().is_err());
}

/// The kernel's data flow on the host, for every tile configuration and ragged shapes: the
/// scheduler's tiles over a few persistent CTAs; per k block, TMA boxes (zero past the edges)
/// written into the stage's smem at the layout's offsets with the hardware's swizzle; each
/// consumer's four k32 wgmma read through the header's descriptors as the hardware decodes them
/// (start address, stride offset, 8-row atoms, swizzle on the address), landing in the ISA
/// figure's fragment; the promotion with the scales the header addresses; the epilogue through
/// the header's fragment map. Values are small integers with power-of-two scales, so every sum
/// is exact and the result must equal the naive GEMM bit for bit, each output written once.
const DATA_FLOW: &str = r#"
#include "sm90/gemm/fp8_gemm.cuh"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
using namespace flashseek::fp8_gemm;

// The hardware, independently of the header: 128B swizzle on an smem address (bits 4-6 XOR
// bits 7-9), the descriptor's fields, a K-major SW128 operand's element (r, k) at start +
// (r / 8) * stride + (r % 8) * 128 + k, and the ISA's D fragment.
unsigned hw_swizzle(unsigned addr) { return addr ^ (((addr >> 7) & 7u) << 4); }
float hw_read(const std::vector<float>& smem, unsigned long long desc, unsigned r, unsigned k) {
    const unsigned start = (unsigned)(desc & 0x3fffu) << 4;
    const unsigned stride = (unsigned)((desc >> 32) & 0x3fffu) << 4;
    if ((desc >> 62) != 1) { std::printf("not 128B swizzled\n"); std::exit(1); }
    return smem.at(hw_swizzle(start + (r / 8) * stride + (r % 8) * 128 + k));
}
void hw_fragment(unsigned t, unsigned i, unsigned& r, unsigned& c) {
    const unsigned warp = t / 32, lane = t % 32;
    r = 16 * warp + lane / 4 + ((i % 4) >= 2 ? 8 : 0);
    c = 8 * (i / 4) + 2 * (lane % 4) + (i % 2);
}

int check(unsigned bm, unsigned bn, unsigned m, unsigned n, unsigned k, unsigned grid) {
    const unsigned kbs = div_ceil(k, kBlockK), st = stages(bm, bn);
    std::vector<float> a((size_t)m * k), b((size_t)n * k), sa((size_t)m * kbs), sb((size_t)div_ceil(n, 128) * kbs);
    for (auto& v : a) v = (float)(std::rand() % 7) - 3.0f;
    for (auto& v : b) v = (float)(std::rand() % 7) - 3.0f;
    for (auto& v : sa) v = std::ldexp(1.0f, std::rand() % 7 - 3);
    for (auto& v : sb) v = std::ldexp(1.0f, std::rand() % 7 - 3);
    std::vector<float> out((size_t)m * n, NAN);
    std::vector<int> writes((size_t)m * n, 0);
    const Scheduler sched = scheduler(m, n, Tiles{bm, bn});
    // The kernel's smem base: 1024-aligned, past a misaligned dynamic allocation.
    const unsigned base = 3 * kSwizzleAtom;
    std::vector<float> smem(base + smem_bytes(bm, bn, st), 0.0f);
    std::vector<float> acc(bm / 64 * 128 * (bn / 2)), part(acc.size());
    for (unsigned cta = 0; cta < grid; ++cta) {
        unsigned long long it = 0;
        for (unsigned long long t = cta; t < sched.tiles(); t += grid) {
            unsigned mb, nb;
            sched.tile(t, mb, nb);
            for (auto& v : acc) v = 0.0f;
            for (unsigned kb = 0; kb < kbs; ++kb, ++it) {
                const unsigned s = ring_stage(it, st);
                // TMA: both boxes, zero past the matrices' edges, at the coordinates the header gives.
                const int k0 = box_k(kb), ra = box_row(mb, bm), rb = box_row(nb, bn);
                for (unsigned r = 0; r < bm; ++r)
                    for (unsigned c = 0; c < 128; ++c) {
                        const unsigned row = ra + r, col = k0 + c;
                        smem.at(base + a_tile_offset(bm, s) + hw_swizzle(r * 128 + c)) =
                            row < m && col < k ? a[(size_t)row * k + col] : 0.0f;
                    }
                for (unsigned r = 0; r < bn; ++r)
                    for (unsigned c = 0; c < 128; ++c) {
                        const unsigned row = rb + r, col = k0 + c;
                        smem.at(base + b_tile_offset(bm, bn, st, s) + hw_swizzle(r * 128 + c)) =
                            row < n && col < k ? b[(size_t)row * k + col] : 0.0f;
                    }
                for (unsigned g = 0; g < bm / 64; ++g) {
                    const unsigned long long da = k_major_sw128_desc(base + a_tile_offset(bm, s) + g * kWgmmaM * kSwizzleRow);
                    const unsigned long long db = k_major_sw128_desc(base + b_tile_offset(bm, bn, st, s));
                    for (unsigned th = 0; th < 128; ++th) {
                        float* p = &part[(g * 128 + th) * (bn / 2)];
                        for (unsigned i = 0; i < bn / 2; ++i) {
                            unsigned r, c;
                            hw_fragment(th, i, r, c);
                            float sum = 0.0f;
                            for (unsigned ks = 0; ks < kBlockK / kWgmmaK; ++ks)
                                for (unsigned kk = 0; kk < kWgmmaK; ++kk)
                                    sum += hw_read(smem, desc_advance_k(da, ks), r, kk) * hw_read(smem, desc_advance_k(db, ks), c, kk);
                            p[i] = sum;
                        }
                        // The promotion, as the kernel: scales of the header's rows and tile.
                        const unsigned row0 = mb * bm + g * 64 + frag_row(th, 0);
                        const unsigned row1 = mb * bm + g * 64 + frag_row(th, 2);
                        const float sa0 = row0 < m ? sa[a_scale_index(row0, kb, kbs)] : 0.0f;
                        const float sa1 = row1 < m ? sa[a_scale_index(row1, kb, kbs)] : 0.0f;
                        const float sbv = sb[b_scale_index(nb, bn, kb, kbs)];
                        float* q = &acc[(g * 128 + th) * (bn / 2)];
                        for (unsigned i = 0; i < bn / 2; ++i) q[i] = std::fma(p[i], (i / 2) % 2 == 0 ? sa0 * sbv : sa1 * sbv, q[i]);
                    }
                }
            }
            for (unsigned g = 0; g < bm / 64; ++g)
                for (unsigned th = 0; th < 128; ++th)
                    for (unsigned i = 0; i < bn / 2; ++i) {
                        const unsigned row = mb * bm + g * 64 + frag_row(th, i);
                        const unsigned col = nb * bn + frag_col(th, i);
                        if (row < m && col < n) {
                            out[(size_t)row * n + col] = acc[(g * 128 + th) * (bn / 2) + i];
                            ++writes[(size_t)row * n + col];
                        }
                    }
        }
    }
    int bad = 0;
    for (unsigned r = 0; r < m; ++r)
        for (unsigned c = 0; c < n; ++c) {
            float want = 0.0f;
            for (unsigned kb = 0; kb < kbs; ++kb) {
                float dot = 0.0f;
                for (unsigned kk = kb * 128; kk < k && kk < (kb + 1) * 128; ++kk) dot += a[(size_t)r * k + kk] * b[(size_t)c * k + kk];
                want += dot * sa[(size_t)r * kbs + kb] * sb[(size_t)(c / 128) * kbs + kb];
            }
            if (writes[(size_t)r * n + c] != 1 || !(out[(size_t)r * n + c] == want)) {
                if (bad < 3) std::printf("m%un%u [%u,%u,%u] out[%u,%u] = %g (written %d), want %g\n", bm, bn, m, n, k, r, c,
                                         out[(size_t)r * n + c], writes[(size_t)r * n + c], want);
                ++bad;
            }
        }
    return bad;
}

int main() {
    const unsigned shapes[][4] = {{1, 1, 16, 1}, {5, 70, 144, 3}, {64, 64, 128, 1}, {65, 129, 256, 2},
                                  {130, 200, 400, 5}, {200, 130, 48, 7}, {3, 300, 1040, 4}, {257, 64, 272, 9}};
    int bad = 0;
    for (unsigned i = 0; i < kNumTiles; ++i) {
        const Tiles t = tiles_at(i);
        for (const auto& s : shapes) bad += check(t.block_m, t.block_n, s[0], s[1], s[2], s[3]);
    }
    std::printf("%d\n", bad);
}
"#;

#[test]
fn kernel_data_flow_on_the_host_is_the_naive_gemm() {
    let Some(out) = host_cpp::run("gemm_data_flow", DATA_FLOW) else { return };
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.lines().last().map(str::trim), Some("0"), "data flow mismatches:\n{text}");
}

/// The contiguous layout of `counts` assignments per expert as moe.cu's sort leaves it: offsets
/// and tile starts (exclusive prefix sums of the counts and of their 64-row tiles), and the
/// assignments grouped by expert (here in reverse order inside a segment: any order is allowed).
fn sorted_layout(counts: &[u32]) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let (mut offsets, mut tile_starts) = (vec![0u32], vec![0u32]);
    for &c in counts {
        offsets.push(offsets.last().unwrap() + c);
        tile_starts.push(tile_starts.last().unwrap() + c.div_ceil(64));
    }
    let mut sorted = Vec::new();
    let mut next = 0u32;
    for &c in counts {
        sorted.extend((next..next + c).rev());
        next += c;
    }
    (offsets, tile_starts, sorted)
}

/// Expert counts: empty experts among busy ones, exact multiples of 64, one hot expert, all empty
/// but the last, DeepSeek's 256 experts lightly loaded.
fn expert_counts() -> Vec<Vec<u32>> {
    let mut cases =
        vec![vec![0, 5, 0, 64, 65, 0, 0, 128, 1], vec![300], vec![0, 0, 0, 7], vec![64, 0, 64], vec![1; 70]];
    cases.push((0..256u32).map(|e| (e * 37 + 11) % 9).collect());
    cases
}

/// `expert_of_tile` and `padded_row_source` against the layout: every padded row of every m
/// tile maps to its expert's segment, every assignment lands in exactly one padded row, padding
/// rows are exactly those past each segment's count, and the tiles fit `grouped_m_tiles`.
#[test]
fn grouped_layout_places_every_assignment_once() {
    let mut program = format!("{HEADER}int main() {{\n");
    for counts in expert_counts() {
        let (offsets, tile_starts, _) = sorted_layout(&counts);
        let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
        let (e, tiles, total) = (counts.len(), tile_starts[counts.len()], offsets[counts.len()]);
        program += &format!(
            "  {{ const uint32_t off[] = {{{}}}; const uint32_t ts[] = {{{}}};\n    std::printf(\"%u \", \
             grouped_m_tiles({total}u, {e}u));\n    for (uint32_t row = 0; row < {tiles}u * 64; ++row) {{ uint32_t e = \
             expert_of_tile(ts, {e}u, row / 64); uint32_t pos = 0; bool has = padded_row_source(off, ts, e, row, pos); \
             std::printf(\"%u %u %u \", e, has ? 1u : 0u, has ? pos : 0u); }} }}\n",
            list(&offsets),
            list(&tile_starts)
        );
    }
    program += "}\n";
    let Some(out) = host_cpp::run("gemm_grouped_layout", &program) else { return };
    let got = host_cpp::numbers(&out);
    let mut at = 0;
    for counts in expert_counts() {
        let (offsets, tile_starts, _) = sorted_layout(&counts);
        let (tiles, total) = (tile_starts[counts.len()], offsets[counts.len()]);
        assert!(u64::from(tiles) <= got[at], "{tiles} tiles over the bound {}", got[at]);
        at += 1;
        let mut seen = vec![0u32; total as usize];
        for row in 0..tiles * 64 {
            let (e, has, pos) = (got[at] as usize, got[at + 1] == 1, got[at + 2] as u32);
            at += 3;
            let mt = row / 64;
            assert!(tile_starts[e] <= mt && mt < tile_starts[e + 1], "row {row}: tile {mt} is not expert {e}'s");
            let i = (mt - tile_starts[e]) * 64 + row % 64;
            assert_eq!(has, i < counts[e], "row {row} of expert {e}");
            if has {
                assert_eq!(pos, offsets[e] + i, "row {row}");
                seen[pos as usize] += 1;
            }
        }
        assert!(seen.iter().all(|&s| s == 1), "an assignment placed other than once: {counts:?}");
    }
    assert_eq!(at, got.len());
}

/// Random routings of at most 64 assignments (decode) over 1 to 256 experts, some ids out of
/// range (-1, n_experts): (n_experts, idx). A small LCG keeps them the same from run to run.
fn masked_routings() -> Vec<(u32, Vec<i32>)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |below: u64| {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % below
    };
    let mut cases = vec![(1, vec![0]), (4, vec![3; 64]), (256, (0..64).collect()), (2, vec![-1, 2, 5])];
    for _ in 0..200 {
        let n_experts = [1u32, 3, 8, 64, 256][next(5) as usize];
        let n = 1 + next(64) as usize;
        // Few experts in play (hot experts), sometimes an id out of range.
        let hot = 1 + next(u64::from(n_experts.min(12)));
        let idx = (0..n)
            .map(|_| match next(40) {
                0 => -1,
                1 => n_experts as i32,
                _ => ((next(hot) * 7919) % u64::from(n_experts)) as i32,
            })
            .collect();
        cases.push((n_experts, idx));
    }
    cases
}

/// moe_mask's layout built independently: slots in the order of each valid expert's first
/// appearance, each slot's rows its assignments in order, then empty rows.
fn masked_layout(n_experts: u32, idx: &[i32]) -> Vec<u64> {
    let empty = u64::from(u32::MAX);
    let slots = idx.len().min(n_experts as usize);
    let mut experts: Vec<i32> = Vec::new();
    for &e in idx {
        if e >= 0 && (e as u32) < n_experts && !experts.contains(&e) {
            experts.push(e);
        }
    }
    let mut words = vec![experts.len() as u64];
    words.extend((0..slots).map(|s| experts.get(s).map_or(0, |&e| e as u64)));
    for s in 0..slots {
        let rows: Vec<u64> = match experts.get(s) {
            Some(&e) => (0..idx.len()).filter(|&a| idx[a] == e).map(|a| a as u64).collect(),
            None => Vec::new(),
        };
        words.extend((0..64).map(|r| rows.get(r).copied().unwrap_or(empty)));
    }
    words
}

/// moe_mask's body (the header's masked_is_first and masked_place, as the kernel's threads run
/// them) and masked_row_source over every padded row, on random routings, against the layout
/// built independently: every valid assignment in exactly one slot row, out-of-range ids in none,
/// one slot per expert with assignments and none for an empty expert (so no CTA runs for one).
#[test]
fn masked_layout_places_every_assignment_once() {
    let mut program = format!("{HEADER}#include <vector>\nint main() {{\n");
    for (n_experts, idx) in masked_routings() {
        let list = idx.iter().map(i32::to_string).collect::<Vec<_>>().join(", ");
        program += &format!(
            "  {{ const int32_t idx[] = {{{list}}}; const uint32_t n = {}u, E = {n_experts}u;\n    const uint32_t \
             slots = masked_slots(n, E); std::vector<uint32_t> w(masked_words(slots), 0); std::vector<uint8_t> \
             first(n);\n    for (uint32_t r = 0; r < slots * 64; ++r) w[masked_row_word(slots, r)] = kMaskedEmpty;\n    \
             for (uint32_t a = 0; a < n; ++a) first[a] = masked_is_first(idx, E, a) ? 1 : 0;\n    uint32_t active = 0;\n    \
             for (uint32_t a = 0; a < n; ++a) {{ uint32_t s, r; if (masked_place(idx, first.data(), E, a, s, r)) {{ \
             w[masked_row_word(slots, s * 64 + r)] = a; if (r == 0) w[masked_expert_word(s)] = idx[a]; }} active += \
             first[a]; }}\n    w[masked_active_word()] = active;\n    std::printf(\"%zu \", w.size()); for (uint32_t v : w) \
             std::printf(\"%u \", v);\n    for (uint32_t row = 0; row < slots * 64; ++row) {{ uint32_t a = 0; bool has = \
             masked_row_source(w.data(), slots, row, a); std::printf(\"%u %u \", has ? 1u : 0u, has ? a : 0u); }} }}\n",
            idx.len()
        );
    }
    program += "}\n";
    let Some(out) = host_cpp::run("gemm_masked_layout", &program) else { return };
    let got = host_cpp::numbers(&out);
    let mut at = 0;
    for (n_experts, idx) in masked_routings() {
        let want = masked_layout(n_experts, &idx);
        let len = got[at] as usize;
        assert_eq!(&got[at + 1..at + 1 + len], &want[..], "layout of {idx:?} over {n_experts} experts");
        at += 1 + len;
        let slots = idx.len().min(n_experts as usize);
        let active = want[0] as usize;
        let mut seen = vec![0u32; idx.len()];
        for row in 0..slots * 64 {
            let (has, a) = (got[at] == 1, got[at + 1] as usize);
            at += 2;
            let (slot, r) = (row / 64, row % 64);
            if has {
                assert!(slot < active, "row {row} of an inactive slot");
                assert_eq!(u64::from(idx[a] as u32), want[1 + slot], "row {row}: assignment {a} of another expert");
                seen[a] += 1;
            } else if slot < active {
                assert!(r > 0, "slot {slot} of an expert without assignments");
            }
        }
        for (a, &e) in idx.iter().enumerate() {
            let valid = e >= 0 && (e as u32) < n_experts;
            assert_eq!(seen[a], u32::from(valid), "assignment {a} (expert {e}) placed {} times", seen[a]);
        }
    }
    assert_eq!(at, got.len());
}

/// The grouped GEMM's data flow on the host, as `DATA_FLOW` for the dense one: moe_permute's
/// padded rows (a warp's copy per row), then per tile of the raster scheduler over the device's
/// m tiles, the expert of the tile, TMA boxes of the padded A and of the stack of all experts'
/// weights (rows past an expert's n read the next expert's, never stored), the wgmma through the
/// descriptors and the ISA fragment, promotion with the expert's scales, and the scattered
/// epilogue; against each assignment's naive product with its expert, exact (small integers,
/// power-of-two scales), each output row written once. The same in the masked layout (decode):
/// moe_mask's slots instead of the sort, the tile count and each slot's expert read from them.
const GROUPED_FLOW: &str = r#"
#include "sm90/gemm/fp8_gemm.cuh"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
using namespace flashseek::fp8_gemm;

unsigned hw_swizzle(unsigned addr) { return addr ^ (((addr >> 7) & 7u) << 4); }
float hw_read(const std::vector<float>& smem, unsigned long long desc, unsigned r, unsigned k) {
    const unsigned start = (unsigned)(desc & 0x3fffu) << 4;
    const unsigned stride = (unsigned)((desc >> 32) & 0x3fffu) << 4;
    return smem.at(hw_swizzle(start + (r / 8) * stride + (r % 8) * 128 + k));
}
void hw_fragment(unsigned t, unsigned i, unsigned& r, unsigned& c) {
    const unsigned warp = t / 32, lane = t % 32;
    r = 16 * warp + lane / 4 + ((i % 4) >= 2 ? 8 : 0);
    c = 8 * (i / 4) + 2 * (lane % 4) + (i % 2);
}

int check(bool masked, unsigned bn, const std::vector<unsigned>& counts, unsigned top_k, unsigned n, unsigned k, unsigned grid) {
    const unsigned E = counts.size(), kbs = div_ceil(k, kBlockK), st = stages(64, bn);
    std::vector<unsigned> off(1, 0), ts(1, 0), sorted;
    for (unsigned c : counts) { off.push_back(off.back() + c); ts.push_back(ts.back() + div_ceil(c, 64)); }
    const unsigned assign = off.back(), tokens = div_ceil(assign, top_k);
    // idx: assignment a goes to expert idx[a]; sorted groups them (any order within an expert).
    std::vector<unsigned> idx(assign);
    { unsigned a = 0; for (unsigned e = 0; e < E; ++e) for (unsigned c = 0; c < counts[e]; ++c) idx[a++] = e; }
    for (unsigned i = assign; i-- > 1;) { unsigned j = std::rand() % (i + 1); std::swap(idx[i], idx[j]); }
    sorted.assign(assign, 0);
    { std::vector<unsigned> cur(off.begin(), off.end() - 1); for (unsigned a = 0; a < assign; ++a) sorted[cur[idx[a]]++] = a; }
    // The masked layout: moe_mask's body, thread by thread.
    const unsigned slots = masked_slots(assign, E);
    std::vector<uint32_t> words(masked_words(slots), 0);
    if (masked) {
        std::vector<int32_t> sidx(idx.begin(), idx.end());
        std::vector<uint8_t> first(assign);
        for (unsigned r = 0; r < slots * 64; ++r) words[masked_row_word(slots, r)] = kMaskedEmpty;
        for (unsigned a = 0; a < assign; ++a) first[a] = masked_is_first(sidx.data(), E, a) ? 1 : 0;
        for (unsigned a = 0; a < assign; ++a) {
            unsigned s, r;
            if (masked_place(sidx.data(), first.data(), E, a, s, r)) {
                words[masked_row_word(slots, s * 64 + r)] = a;
                if (r == 0) words[masked_expert_word(s)] = idx[a];
            }
            words[masked_active_word()] += first[a];
        }
    }
    const unsigned m_tiles = masked ? slots : grouped_m_tiles(assign, E);
    const unsigned tiles_m = masked ? words[masked_active_word()] : ts[E];
    if (tiles_m > m_tiles) { std::printf("bound\n"); return 1; }
    // The assignment in padded row `row`, as moe_permute and the epilogue find it.
    auto source = [&](unsigned row, unsigned& a) {
        if (masked) return masked_row_source(words.data(), slots, row, a);
        if (row / 64 >= ts[E]) return false;
        unsigned pos;
        if (!padded_row_source(off.data(), ts.data(), expert_of_tile(ts.data(), E, row / 64), row, pos)) return false;
        a = sorted[pos];
        return true;
    };
    std::vector<float> x((size_t)tokens * k), sx((size_t)tokens * kbs), w((size_t)E * n * k), sw((size_t)E * div_ceil(n, 128) * kbs);
    for (auto& v : x) v = (float)(std::rand() % 7) - 3.0f;
    for (auto& v : w) v = (float)(std::rand() % 7) - 3.0f;
    for (auto& v : sx) v = std::ldexp(1.0f, std::rand() % 7 - 3);
    for (auto& v : sw) v = std::ldexp(1.0f, std::rand() % 7 - 3);
    const unsigned long long sw_stride = (unsigned long long)div_ceil(n, 128) * kbs;
    // moe_permute.
    const unsigned rows = m_tiles * kGroupedBlockM;
    std::vector<float> pa((size_t)rows * k, 7.0f), psa((size_t)rows * kbs, 7.0f);
    for (unsigned row = 0; row < rows; ++row) {
        unsigned a = 0;
        const bool has = source(row, a);
        const unsigned src = a / top_k;
        for (unsigned c = 0; c < k; ++c) pa[(size_t)row * k + c] = has ? x[(size_t)src * k + c] : 0.0f;
        for (unsigned c = 0; c < kbs; ++c) psa[(size_t)row * kbs + c] = has ? sx[(size_t)src * kbs + c] : 0.0f;
    }
    std::vector<float> out((size_t)assign * n, NAN);
    std::vector<int> writes((size_t)assign * n, 0);
    const Scheduler sched{tiles_m, div_ceil(n, bn)};
    const unsigned base = kSwizzleAtom;
    std::vector<float> smem(base + smem_bytes(64, bn, st), 0.0f), part(bn / 2), acc(128 * (bn / 2));
    for (unsigned cta = 0; cta < grid; ++cta) {
        unsigned long long it = 0;
        for (unsigned long long t = cta; t < sched.tiles(); t += grid) {
            unsigned mt, nb;
            sched.tile(t, mt, nb);
            const unsigned e = masked ? words[masked_expert_word(mt)] : expert_of_tile(ts.data(), E, mt);
            const unsigned a_row = mt * 64;
            const int b_row = grouped_box_row(e, n, nb, bn);
            for (auto& v : acc) v = 0.0f;
            for (unsigned kb = 0; kb < kbs; ++kb, ++it) {
                const unsigned s = ring_stage(it, st);
                for (unsigned r = 0; r < 64; ++r)
                    for (unsigned c = 0; c < 128; ++c) {
                        const unsigned row = a_row + r, col = kb * 128 + c;
                        smem.at(base + a_tile_offset(64, s) + hw_swizzle(r * 128 + c)) = row < rows && col < k ? pa[(size_t)row * k + col] : 0.0f;
                    }
                for (unsigned r = 0; r < bn; ++r)
                    for (unsigned c = 0; c < 128; ++c) {
                        const unsigned row = b_row + r, col = kb * 128 + c;
                        smem.at(base + b_tile_offset(64, bn, st, s) + hw_swizzle(r * 128 + c)) = row < E * n && col < k ? w[(size_t)row * k + col] : 0.0f;
                    }
                const unsigned long long da = k_major_sw128_desc(base + a_tile_offset(64, s));
                const unsigned long long db = k_major_sw128_desc(base + b_tile_offset(64, bn, st, s));
                for (unsigned th = 0; th < 128; ++th) {
                    for (unsigned i = 0; i < bn / 2; ++i) {
                        unsigned r, c;
                        hw_fragment(th, i, r, c);
                        float sum = 0.0f;
                        for (unsigned ks = 0; ks < 4; ++ks)
                            for (unsigned kk = 0; kk < 32; ++kk) sum += hw_read(smem, desc_advance_k(da, ks), r, kk) * hw_read(smem, desc_advance_k(db, ks), c, kk);
                        part[i] = sum;
                    }
                    const unsigned row0 = a_row + frag_row(th, 0), row1 = a_row + frag_row(th, 2);
                    const float sa0 = psa[a_scale_index(row0, kb, kbs)], sa1 = psa[a_scale_index(row1, kb, kbs)];
                    const float sbv = sw[e * sw_stride + b_scale_index(nb, bn, kb, kbs)];
                    for (unsigned i = 0; i < bn / 2; ++i) acc[th * (bn / 2) + i] = std::fma(part[i], (i / 2) % 2 == 0 ? sa0 * sbv : sa1 * sbv, acc[th * (bn / 2) + i]);
                }
            }
            for (unsigned th = 0; th < 128; ++th)
                for (unsigned i = 0; i < bn / 2; ++i) {
                    const unsigned row = a_row + frag_row(th, i), col = nb * bn + frag_col(th, i);
                    unsigned a;
                    if (!source(row, a) || col >= n) continue;
                    out[(size_t)a * n + col] = acc[th * (bn / 2) + i];
                    ++writes[(size_t)a * n + col];
                }
        }
    }
    int bad = 0;
    for (unsigned a = 0; a < assign; ++a)
        for (unsigned c = 0; c < n; ++c) {
            const unsigned e = idx[a], tok = a / top_k;
            float want = 0.0f;
            for (unsigned kb = 0; kb < kbs; ++kb) {
                float dot = 0.0f;
                for (unsigned kk = kb * 128; kk < k && kk < (kb + 1) * 128; ++kk) dot += x[(size_t)tok * k + kk] * w[((size_t)e * n + c) * k + kk];
                want += dot * sx[(size_t)tok * kbs + kb] * sw[e * sw_stride + (c / 128) * kbs + kb];
            }
            if (writes[(size_t)a * n + c] != 1 || !(out[(size_t)a * n + c] == want)) {
                if (bad < 3) std::printf("%s n%u E%u [%u,%u] out[%u,%u] = %g (written %d), want %g\n", masked ? "masked" : "grouped", bn, E, n, k, a, c, out[(size_t)a * n + c], writes[(size_t)a * n + c], want);
                ++bad;
            }
        }
    return bad;
}

int main() {
    int bad = 0;
    for (unsigned bn : {64u, 128u}) {
        bad += check(false, bn, {0, 5, 0, 64, 65, 0, 1}, 2, 70, 144, 3);
        bad += check(false, bn, {3, 130}, 1, 200, 48, 2);
        bad += check(false, bn, {0, 0, 9}, 3, 129, 272, 5);
        bad += check(false, bn, {1, 1, 1, 1, 1, 1, 1, 1}, 4, 64, 128, 1);
        // Decode: at most 64 assignments, one slot per active expert.
        bad += check(true, bn, {0, 5, 0, 2, 0, 0, 1}, 2, 70, 144, 3);
        bad += check(true, bn, {64}, 8, 200, 48, 2);
        bad += check(true, bn, {0, 0, 9}, 3, 129, 272, 5);
        bad += check(true, bn, std::vector<unsigned>(64, 1), 8, 64, 128, 7);
        bad += check(true, bn, {1, 1, 1, 1, 1, 1, 1, 1}, 8, 136, 400, 1);
    }
    std::printf("%d\n", bad);
}
"#;

#[test]
fn grouped_and_masked_data_flows_on_the_host_are_the_naive_expert_gemm() {
    let Some(out) = host_cpp::run("gemm_grouped_flow", GROUPED_FLOW) else { return };
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.lines().last().map(str::trim), Some("0"), "grouped data flow mismatches:\n{text}");
}
