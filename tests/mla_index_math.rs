//! The index math of the Hopper MLA decode (`csrc/sm90/mla/decode_fast.cuh`) compiled for the
//! host and checked against independent formulations: the chunked tile layout against CuTe's
//! Swizzle<3,4,3>, the grid's (item, head group) map, every wgmma descriptor of the kernel decoded
//! by the PTX ISA's canonical layouts down to the element it reaches, the producer's lane map
//! (every byte of a tile written once, from the right source byte), page and top-k addressing
//! against `Pages`, and the kernel's data flow (tiles, the two warpgroups' maxima, online softmax,
//! bf16 rounding, splits and their combine) emulated over a `decode_plan` against exact attention.
//! The swizzle, descriptor encoding, accumulator fragment and mbarrier ring it builds on are the
//! common ones, tested in `sm90_layout.rs`. Needs a C++ compiler (`c++`); skips without one. Runs
//! without a GPU.

mod host_cpp;
mod mla_bound;

use std::collections::HashSet;

use flashseek::backend::decode_plan::{decode_plan, WHOLE};
use flashseek::backend::Pages;
use flashseek::kv_layout::LatentFp8;

const HEADER: &str = "#include \"sm90/mla/decode_fast.cuh\"\n#include <cstdio>\n#include <cstdint>\n#include <initializer_list>\nusing namespace \
                      flashseek::mla_fast;\n";

fn program(body: &str) -> String {
    format!("{HEADER}int main() {{\n{body}\n  return 0;\n}}\n")
}

/// CuTe's Swizzle<3,4,3> on a byte address: bits 7..9 XORed into bits 4..6.
fn cute_sw128(addr: u64) -> u64 {
    addr ^ ((addr >> 3) & 0x70)
}

/// Where the kernel's stores put element (row, col) of a 64 x 576 bf16 tile at `region`: chunk
/// col / 64 of 64 rows x 128 bytes, then CuTe's swizzle.
fn element(region: u64, row: u64, col: u64) -> u64 {
    region + (col / 64) * 8192 + cute_sw128(row * 128 + (col % 64) * 2)
}

#[test]
fn tile_layout_is_chunked_cute_swizzle_and_a_bijection() {
    let src = program(
        "  for (uint32_t r = 0; r < 64; ++r) for (uint32_t c = 0; c < 576; ++c) std::printf(\"%u \", tile_offset(r, c));",
    );
    let Some(out) = host_cpp::run("mla_swizzle", &src) else { return };
    let tile = host_cpp::numbers(&out);
    let mut seen = HashSet::new();
    for r in 0..64u64 {
        for c in 0..576u64 {
            let v = tile[(r * 576 + c) as usize];
            assert_eq!(v, element(0, r, c), "row {r} col {c}");
            assert!(v % 2 == 0 && v < 73728 && seen.insert(v));
        }
    }
    assert_eq!(seen.len(), 64 * 576);
}

/// A wgmma shared-memory descriptor's fields (PTX ISA, "Matrix Descriptor Format").
struct Desc {
    start: u64,
    lbo: u64,
    sbo: u64,
    base_offset: u64,
    swizzle: u64,
}

fn decode_desc(d: u64) -> Desc {
    Desc {
        start: (d & 0x3fff) << 4,
        lbo: ((d >> 16) & 0x3fff) << 4,
        sbo: ((d >> 32) & 0x3fff) << 4,
        base_offset: (d >> 49) & 7,
        swizzle: d >> 62,
    }
}

/// The byte a K-major operand's element (mn, k) (bf16, 128-byte swizzle) is read from: CuTe's
/// canonical ((8,m),(T,2)):((8T,SBO),(1,T)) layout, then the swizzle of the address.
fn k_major(d: &Desc, mn: u64, k: u64) -> u64 {
    assert_eq!((d.swizzle, d.base_offset), (1, 0));
    cute_sw128(d.start + (mn / 8) * d.sbo + (mn % 8) * 128 + 2 * k)
}

/// The same for an MN-major one, element (k, mn): ((T,8,m),(8,k)):((1,T,LBO),(8T,SBO)).
fn mn_major(d: &Desc, k: u64, mn: u64) -> u64 {
    assert_eq!((d.swizzle, d.base_offset), (1, 0));
    cute_sw128(d.start + (mn / 64) * d.lbo + (k / 8) * d.sbo + (k % 8) * 128 + 2 * (mn % 64))
}

/// Every descriptor the kernel builds (at a 1024-aligned base of 0), decoded element by element:
/// QK's A is the query tile (64 heads x 16 columns of step s), its B the 32 keys of warpgroup g;
/// PV's A is P (64 heads x 16 keys), its B the keys' value columns 256g.. read transposed.
#[test]
fn descriptors_reach_the_intended_elements() {
    let mut body = String::from(
        "  std::printf(\"%u %u %u %u %u \", Smem::q, Smem::k(0), Smem::k(1), Smem::p, Smem::bytes);\n  for (uint32_t s \
         = 0; s < kQkSteps; ++s) std::printf(\"%llu \", (unsigned long long)k_major_sw128_desc(qk_a(s)));\n",
    );
    body +=
        "  for (int st = 0; st < 2; ++st) for (uint32_t g = 0; g < 2; ++g) for (uint32_t s = 0; s < kQkSteps; ++s) \
             std::printf(\"%llu \", (unsigned long long)k_major_sw128_desc(qk_b(st, g, s)));\n";
    body += "  for (uint32_t s = 0; s < kPvSteps; ++s) std::printf(\"%llu \", (unsigned long long)k_major_sw128_desc(pv_a(s)));\n";
    body +=
        "  for (int st = 0; st < 2; ++st) for (uint32_t g = 0; g < 2; ++g) for (uint32_t s = 0; s < kPvSteps; ++s) \
             std::printf(\"%llu \", (unsigned long long)smem_desc(pv_b(st, g, s), kVLbo, kVSbo, kSwizzle128B));\n";
    let Some(out) = host_cpp::run("mla_descriptors", &program(&body)) else { return };
    let got = host_cpp::numbers(&out);
    let (q, k, p, bytes) = (got[0], [got[1], got[2]], got[3], got[4]);
    // Regions 1024-aligned, apart, and within the launch's shared memory (less the alignment slack).
    assert!([q, k[0], k[1], p].iter().all(|r| r % 1024 == 0));
    assert_eq!((k[0] - q, k[1] - k[0], p - k[1]), (73728, 73728, 73728));
    assert!(p + 8192 <= bytes - 1024);
    let mut d = got[5..].iter().map(|&v| decode_desc(v));
    for s in 0..36 {
        let a = d.next().unwrap();
        for m in 0..64 {
            for kk in 0..16 {
                assert_eq!(k_major(&a, m, kk), element(q, m, 16 * s + kk), "QK A step {s} ({m}, {kk})");
            }
        }
    }
    for (st, &tile) in k.iter().enumerate() {
        for g in 0..2 {
            for s in 0..36 {
                let b = d.next().unwrap();
                for n in 0..32 {
                    for kk in 0..16 {
                        let want = element(tile, 32 * g + n, 16 * s + kk);
                        assert_eq!(k_major(&b, n, kk), want, "QK B stage {st} group {g} step {s} ({n}, {kk})");
                    }
                }
            }
        }
    }
    for s in 0..4 {
        let a = d.next().unwrap();
        for m in 0..64 {
            for kk in 0..16 {
                assert_eq!(k_major(&a, m, kk), p + cute_sw128(m * 128 + 2 * (16 * s + kk)), "PV A step {s}");
            }
        }
    }
    for (st, &tile) in k.iter().enumerate() {
        for g in 0..2 {
            for s in 0..4 {
                let b = d.next().unwrap();
                for kk in 0..16 {
                    for n in 0..256 {
                        let want = element(tile, 16 * s + kk, 256 * g + n);
                        assert_eq!(mn_major(&b, kk, n), want, "PV B stage {st} group {g} step {s} ({kk}, {n})");
                    }
                }
            }
        }
    }
    assert!(d.next().is_none());
}

/// The grid: items x head groups, every (item, group of 64 heads) exactly once, for head counts
/// that are and are not multiples of 64.
#[test]
fn grid_covers_every_item_and_head_group_once() {
    let src = program(
        "  for (uint32_t heads : {1u, 16u, 64u, 65u, 128u, 130u}) for (uint32_t b = 0; b < 7 * head_groups(heads); ++b) \
         { Cta c = cta_of(b, heads); std::printf(\"%u %u %u \", heads, c.item, c.head0); }",
    );
    let Some(out) = host_cpp::run("mla_grid", &src) else { return };
    let got = host_cpp::numbers(&out);
    let mut at = got.chunks(3);
    for heads in [1u64, 16, 64, 65, 128, 130] {
        let groups = heads.div_ceil(64);
        let mut seen = HashSet::new();
        for _ in 0..7 * groups {
            let c = at.next().unwrap();
            assert_eq!(c[0], heads);
            assert!(c[1] < 7 && c[2] % 64 == 0 && c[2] < heads && seen.insert((c[1], c[2])));
        }
        assert_eq!(seen.len() as u64, 7 * groups);
    }
    assert!(at.next().is_none());
}

/// The producer: every (key, column) of a tile stored exactly once per tile, each code from the
/// token byte of its column with the scale of its 128-group, each RoPE value from its bf16.
#[test]
fn producer_writes_every_tile_byte_once_from_its_source() {
    let src = program(
        "  for (uint32_t w = 0; w < 4; ++w) for (uint32_t h = 0; h < 2; ++h) for (uint32_t l = 0; l < 32; ++l) {\n    \
         for (uint32_t j = 0; j < 8; ++j) std::printf(\"%u %u %u %u \", producer_key(w, h, j), code_col(l), code_src(l), \
         scale_src(l));\n    for (uint32_t r = 0; r < 2; ++r) std::printf(\"%u %u %u \", rope_key(w, h, r, l), \
         rope_col(l), rope_src(l));\n  }",
    );
    let Some(out) = host_cpp::run("mla_producer", &src) else { return };
    let got = host_cpp::numbers(&out);
    let token = LatentFp8::new(512, 64).unwrap();
    let mut count = vec![0u32; 64 * 576];
    let mut it = got.chunks(4 * 8 + 3 * 2);
    for _ in 0..4 * 2 * 32 {
        let chunk = it.next().unwrap();
        for c in chunk[..32].chunks(4) {
            let (key, col, src, scale) = (c[0] as usize, c[1] as usize, c[2] as usize, c[3] as usize);
            assert!(key < 64 && col + 16 <= 512 && col % 16 == 0);
            assert_eq!(src, col, "code byte i is column i");
            assert_eq!(col / 128, (col + 15) / 128, "16 codes of one scale group");
            assert_eq!(scale, token.scale_offset() + 4 * (col / 128));
            for x in col..col + 16 {
                count[key * 576 + x] += 1;
            }
        }
        for c in chunk[32..].chunks(3) {
            let (key, col, src) = (c[0] as usize, c[1] as usize, c[2] as usize);
            assert!(key < 64 && (512..576).contains(&col) && col % 8 == 0);
            assert_eq!(src, token.rope_offset() + 2 * (col - 512));
            for x in col..col + 8 {
                count[key * 576 + x] += 1;
            }
        }
    }
    assert!(count.iter().all(|&c| c == 1), "a tile value written {:?} times", count.iter().find(|&&c| c != 1));
}

/// The bf16 producer: every byte of a tile copied exactly once per tile, to where the tile layout
/// puts its (key, column), from the row bytes of that column (2 a value); each 8-lane phase of a
/// copy step stores to 8 distinct bank groups; row offsets in 64 bits.
#[test]
fn bf16_producer_copies_every_tile_byte_once_from_its_source() {
    let src = program(
        "  for (uint32_t w = 0; w < 4; ++w) for (uint32_t r = 0; r < kBf16Copies; ++r) for (uint32_t l = 0; l < 32; \
         ++l)\n    std::printf(\"%u %u %u %u %u \", bf16_key(w, r, l), bf16_warp_key(r, l), bf16_col(r, l), bf16_src(r, \
         l), tile_offset(bf16_key(w, r, l), bf16_col(r, l)));\n  std::printf(\"%d %d %llu\", kBf16Copies, \
         kBf16RowBytes, (unsigned long long)bf16_row_offset(5000000000ull));",
    );
    let Some(out) = host_cpp::run("mla_bf16_producer", &src) else { return };
    let got = host_cpp::numbers(&out);
    let copies = 16 * 72 / 32;
    assert_eq!(got.len(), 4 * copies * 32 * 5 + 3);
    assert_eq!(&got[got.len() - 3..], &[copies as u64, 1152, 5_000_000_000 * 1152]);
    let mut count = vec![0u32; 64 * 1152];
    for (i, c) in got[..got.len() - 3].chunks(5).enumerate() {
        let (w, lane) = (i / (copies * 32), i % 32);
        let (key, warp_key, col, src, dst) = (c[0], c[1], c[2], c[3], c[4]);
        assert!(warp_key < 16 && key == 16 * w as u64 + warp_key, "warp {w} copies its own 16 keys");
        assert!(col % 8 == 0 && col + 8 <= 576);
        assert_eq!(src, 2 * col, "row byte 2i is column i");
        assert_eq!(dst, element(0, key, col), "the tile layout's place of (key, col)");
        for b in dst..dst + 16 {
            count[b as usize] += 1;
        }
        if lane % 8 == 7 {
            let phase = &got[5 * (i - 7)..5 * (i + 1)];
            let banks: HashSet<u64> = phase.chunks(5).map(|c| c[4] / 16 % 8).collect();
            assert_eq!(banks.len(), 8, "copy {i}: an 8-lane phase stores to 8 bank groups");
        }
    }
    assert!(count.iter().all(|&c| c == 1), "a tile byte written {:?} times", count.iter().find(|&&c| c != 1));
}

/// position_slot and entry_position against `Pages::slot` and the CPU's candidate rule, over
/// random tables (pages out of order, short tables, cache rows past the cache).
#[test]
fn page_and_topk_addressing_is_the_cpus() {
    let mut seed = 7u64;
    let mut next = |n: u64| {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    let block_size = 1 + next(64) as usize;
    let blocks: Vec<u32> = (0..40).map(|_| next(50) as u32).collect();
    let starts: Vec<u32> = vec![0, 7, 7, 25, 40];
    let slots = 45 * block_size as u64;
    let topk: Vec<i32> = (0..200).map(|_| next(400) as i32 - 50).collect();
    let mut body = format!(
        "  const uint32_t blocks[] = {{{}}};\n  const int32_t topk[] = {{{}}};\n",
        blocks.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(","),
        topk.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(",")
    );
    body += &format!(
        "  for (uint64_t first : {{0ull, 7ull, 25ull, 39ull, 40ull}}) for (uint64_t t = 0; t < 1200; ++t) \
         std::printf(\"%lld \", position_slot(blocks, 40, first, {block_size}, {slots}ull, t));\n  for (uint32_t pos : \
         {{0u, 5u, 100u, 349u}}) for (uint64_t e = 0; e < 200; ++e) std::printf(\"%lld %lld \", entry_position(topk, e, \
         pos), entry_position(nullptr, e, pos));"
    );
    let Some(out) = host_cpp::run("mla_addressing", &program(&body)) else { return };
    let text = String::from_utf8(out).unwrap();
    let got: Vec<i64> = text.split_whitespace().map(|w| w.parse().unwrap()).collect();
    let pages = Pages { block_size, blocks: &blocks, starts: &starts };
    let mut i = 0;
    for (seq, first) in [(Some(0usize), 0usize), (Some(2), 7), (Some(3), 25), (None, 39), (None, 40)] {
        for t in 0..1200usize {
            // The kernel bounds a position by the table's end and the cache's; the host checked
            // every attended position against its sequence's own pages (Pages::check_context).
            let table = blocks.get(first + t / block_size).map(|&b| b as usize * block_size + t % block_size);
            let want = table.filter(|&s| (s as u64) < slots).map_or(-1, |s| s as i64);
            assert_eq!(got[i], want, "first {first} t {t}");
            if let Some(s) = seq.and_then(|q| pages.slot(q, t)).filter(|&s| (s as u64) < slots) {
                assert_eq!(got[i], s as i64, "sequence {seq:?} t {t}");
            }
            i += 1;
        }
    }
    for pos in [0i64, 5, 100, 349] {
        for (e, &entry) in topk.iter().enumerate() {
            let t = i64::from(entry);
            assert_eq!(got[i], if (0..=pos).contains(&t) { t } else { -1 }, "top-k entry {e} at {pos}");
            assert_eq!(got[i + 1], if e as i64 <= pos { e as i64 } else { -1 }, "dense entry {e} at {pos}");
            i += 2;
        }
    }
    assert_eq!(i, got.len());
}

/// SplitMix64, for data both the Rust side and nothing else needs to agree on.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// The kernel's data flow on the host, per CTA of a `decode_plan`: tiles of 64 entries resolved
/// through the header's addressing, the query rounded to bf16, each warpgroup's 32 scores and
/// maxima, the shared online step, weights through exp_fast, P rounded to bf16 for the values
/// and f32 for the sums, the whole row's output or the partials, then the combine of
/// `decode.cu` (ported). Against exact attention over the decoded cache within the GPU half of
/// `mla_bound`, for dense and sparse rows, ragged contexts, -1 and out-of-range entries, and
/// plans with and without splits; over the FP8 cache and over the bf16 cache of the same
/// (bf16-exact) values, read as the bf16 producer reads it.
#[test]
fn emulated_data_flow_matches_exact_attention() {
    let token = LatentFp8::new(512, 64).unwrap();
    let heads = 64usize;
    let block_size = 64usize;
    for (case, (ctx, sparse, ctas), bf16) in [
        (vec![1usize, 70, 300], false, 132usize),
        (vec![900, 5], false, 4),
        (vec![400, 130, 64], true, 132),
        (vec![2000], true, 8),
        (vec![700, 700], false, 1),
        // Sparse with rows whose entries are all invalid (-1 or past the position): zeros out
        // of the combine (split rows), and from the item itself (whole rows).
        (vec![3000, 20, 900], true, 16),
        (vec![3000, 20, 900], true, 1),
    ]
    .into_iter()
    .enumerate()
    .flat_map(|(case, c)| [(case, c.clone(), false), (case, c, true)])
    {
        let tag = format!("{case}{}", if bf16 { "_bf16" } else { "" });
        let mut rng = Rng(case as u64 + 1);
        let rows = ctx.len();
        // Each row its own sequence with shuffled pages of a shared pool.
        let pages_per: Vec<usize> = ctx.iter().map(|c| c.div_ceil(block_size)).collect();
        let total_pages: usize = pages_per.iter().sum();
        let mut blocks: Vec<u32> = (0..total_pages as u32 + 2).collect();
        for i in (1..blocks.len()).rev() {
            blocks.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        blocks.truncate(total_pages);
        let mut starts = vec![0u32];
        for p in &pages_per {
            starts.push(starts.last().unwrap() + *p as u32);
        }
        let slots = (total_pages + 2) * block_size;
        // Tokens: encoded like the cache, decoded as the reference sees them.
        let mut cache = vec![0u8; slots * token.token_bytes()];
        let mut decoded = vec![0f32; slots * 576];
        for s in 0..slots {
            let mag = 2f32.powi((rng.next() % 4) as i32 - 3);
            let x: Vec<f32> = (0..576).map(|_| rng.unit() * mag).collect();
            let t = &mut cache[s * token.token_bytes()..(s + 1) * token.token_bytes()];
            token.encode(&x[..512], &x[512..], t);
            token.decode(t, &mut decoded[s * 576..(s + 1) * 576]);
        }
        let pos: Vec<usize> = ctx.iter().map(|c| c - 1).collect();
        let k = if sparse { 300 } else { 0 };
        let topk: Vec<i32> = (0..rows * k)
            .map(|i| {
                let p = pos[i / k.max(1)] as u64;
                if case >= 5 && i / k != 2 {
                    return if i % 2 == 0 { -1 } else { (p + 1 + rng.next() % 5) as i32 };
                }
                match rng.next() % 6 {
                    0 => -1,
                    1 => (p + 1 + rng.next() % 5) as i32,
                    _ => (rng.next() % (p + 1)) as i32,
                }
            })
            .collect();
        let q: Vec<f32> = (0..rows * heads * 576).map(|_| rng.unit()).collect();
        let scale = 0.8 / 24.0;
        let keys: Vec<usize> = (0..rows).map(|r| if sparse { k } else { pos[r] + 1 }).collect();
        let plan = decode_plan(&keys, 64, 1, ctas, 64);

        let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let write = |name: &str, bytes: &[u8]| {
            let path = dir.join(format!("mla_flow_{tag}_{name}"));
            std::fs::write(&path, bytes).unwrap();
            path.display().to_string()
        };
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let q_path = write("q", &f32s(&q));
        let cache_path = if bf16 {
            // The decoded values are bf16 already (e4m3 times a power of two, bf16 RoPE).
            let rows: Vec<u8> = decoded.iter().flat_map(|x| ((x.to_bits() >> 16) as u16).to_le_bytes()).collect();
            assert!(decoded.iter().all(|x| x.to_bits() & 0xffff == 0));
            write("cache", &rows)
        } else {
            write("cache", &cache)
        };
        let src = format!(
            "{HEADER}{}",
            EMULATION
                .replace("@Q@", &q_path)
                .replace("@CACHE@", &cache_path)
                .replace("@ROWS@", &rows.to_string())
                .replace("@HEADS@", &heads.to_string())
                .replace("@SLOTS@", &slots.to_string())
                .replace("@BS@", &block_size.to_string())
                .replace("@SCALE@", &format!("{scale:e}f"))
                .replace("@PARTS@", &plan.parts.max(1).to_string())
                .replace("@MERGES@", &if plan.merges.is_empty() { "0".into() } else { join(plan.merge_words().iter()) })
                .replace("@NMERGES@", &plan.merges.len().to_string())
                .replace("@POS@", &join(pos.iter()))
                .replace("@SEQ@", &join(0..rows))
                .replace("@STARTS@", &join(starts.iter()))
                .replace("@NSTARTS@", &starts.len().to_string())
                .replace("@BLOCKS@", &join(blocks.iter()))
                .replace("@NBLOCKS@", &blocks.len().to_string())
                .replace("@TOPK@", &if sparse { join(topk.iter()) } else { "0".into() })
                .replace("@TOPKCOLS@", &k.to_string())
                .replace("@SPARSE@", if sparse { "true" } else { "false" })
                .replace("@BF16@", if bf16 { "true" } else { "false" })
                .replace("@ITEMS@", &join(plan.words().iter()))
                .replace("@NITEMS@", &plan.items.len().to_string())
        );
        let Some(out) = host_cpp::run(&format!("mla_flow_{tag}"), &src) else { return };
        let got: Vec<f32> = out.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        assert_eq!(got.len(), rows * heads * 512);
        let pages = Pages { block_size, blocks: &blocks, starts: &starts };
        let mut worst = 0.0f64;
        for r in 0..rows {
            let entries: Vec<usize> = if sparse {
                topk[r * k..(r + 1) * k]
                    .iter()
                    .filter(|&&t| t >= 0 && t as usize <= pos[r])
                    .map(|&t| t as usize)
                    .collect()
            } else {
                (0..=pos[r]).collect()
            };
            let rows_of: Vec<&[f32]> = entries
                .iter()
                .map(|&t| {
                    let s = pages.slot(r, t).unwrap();
                    &decoded[s * 576..(s + 1) * 576]
                })
                .collect();
            for h in 0..heads {
                let qh = &q[(r * heads + h) * 576..][..576];
                let re = mla_bound::reference(qh, &rows_of, scale, 512, 64);
                for c in 0..512 {
                    let g = f64::from(got[(r * heads + h) * 512 + c]);
                    let err = (g - re.exact[c]).abs();
                    let b = re.bound(c, re.gpu);
                    assert!(err <= b, "case {case} row {r} head {h} col {c}: {g} vs {} (bound {b:e})", re.exact[c]);
                    worst = worst.max(err / b);
                }
            }
        }
        let split = plan.items.iter().filter(|w| w.part != WHOLE).count();
        eprintln!(
            "emulation case {case} ({}): {} items ({split} split), worst error {worst:.3} of the bound",
            if bf16 { "bf16" } else { "fp8" },
            plan.items.len()
        );
    }
}

fn join<T: ToString>(v: impl Iterator<Item = T>) -> String {
    v.map(|x| x.to_string()).collect::<Vec<_>>().join(",")
}

/// The emulation program: the kernel's steps in the kernel's order (one thread's view per
/// (head, warpgroup) collapsed into loops), reading the query and the cache from files.
const EMULATION: &str = r#"
#include <cstring>
#include <vector>
static float bf16(float x) {
    uint32_t b; std::memcpy(&b, &x, 4);
    b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    float y; std::memcpy(&y, &b, 4); return y;
}
static std::vector<unsigned char> slurp(const char* path) {
    std::FILE* f = std::fopen(path, "rb"); std::vector<unsigned char> v;
    int c; while ((c = std::fgetc(f)) != EOF) v.push_back((unsigned char)c);
    std::fclose(f); return v;
}
// e4m3fn to f32, from its bits.
static float e4m3(unsigned char c) {
    int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
    float v = e == 0 ? std::ldexp((float)m, -9) : std::ldexp((float)(8 + m), e - 10);
    if (e == 15 && m == 7) v = NAN;
    return s ? -v : v;
}
int main() {
    const uint32_t rows = @ROWS@, heads = @HEADS@, parts = @PARTS@, n_items = @NITEMS@, n_merges = @NMERGES@;
    const uint32_t merges[] = {@MERGES@};
    const uint64_t slots = @SLOTS@;
    const float scale = @SCALE@;
    const uint32_t pos[] = {@POS@}, seq[] = {@SEQ@}, starts[] = {@STARTS@}, blocks[] = {@BLOCKS@};
    const uint32_t n_starts = @NSTARTS@, n_blocks = @NBLOCKS@, topk_cols = @TOPKCOLS@;
    const int32_t topk[] = {@TOPK@};
    const bool sparse = @SPARSE@, bf16_cache = @BF16@;
    const uint32_t items[] = {@ITEMS@};
    std::vector<unsigned char> qb = slurp("@Q@"), cache = slurp("@CACHE@");
    const float* q = reinterpret_cast<const float*>(qb.data());
    std::vector<float> out(rows * heads * kNope, 0.0f);
    std::vector<float> part_acc(parts * heads * kNope, 0.0f), part_stat(parts * heads * 3, 0.0f);
    for (uint32_t item = 0; item < n_items; ++item) {
        const uint32_t row = items[4 * item], begin = items[4 * item + 1], end = items[4 * item + 2], part = items[4 * item + 3];
        const uint32_t tiles = (end - begin + kTileKeys - 1) / kTileKeys;
        const uint64_t first = seq[row] < n_starts ? starts[seq[row]] : n_blocks;
        const int32_t* topk_row = sparse ? topk + (size_t)row * topk_cols : nullptr;
        for (uint32_t h = 0; h < heads; ++h) {
            float qh[kLatent];
            for (int d = 0; d < kLatent; ++d) qh[d] = bf16(q[((size_t)row * heads + h) * kLatent + d]);
            float m = neg_inf(), l[2] = {0.0f, 0.0f}, o[kNope] = {0.0f};
            uint32_t keys = 0;
            for (uint32_t it = 0; it < tiles; ++it) {
                float tile[kTileKeys][kLatent];
                bool valid[kTileKeys];
                for (uint32_t j = 0; j < kTileKeys; ++j) {
                    const uint64_t e = (uint64_t)begin + (uint64_t)it * kTileKeys + j;
                    long long s = -1;
                    if (e < end) {
                        const long long t = entry_position(topk_row, e, pos[row]);
                        if (t >= 0) s = position_slot(blocks, n_blocks, first, @BS@, slots, (uint64_t)t);
                    }
                    valid[j] = s >= 0;
                    keys += valid[j];
                    const uint64_t at = s < 0 ? 0 : bf16_cache ? bf16_row_offset((uint64_t)s) : token_offset((uint64_t)s);
                    const unsigned char* tok = cache.data() + at;
                    for (int d = 0; d < kLatent; ++d) {
                        float v = 0.0f;
                        if (s >= 0 && bf16_cache) {
                            uint16_t b; std::memcpy(&b, tok + 2 * d, 2);
                            uint32_t w = (uint32_t)b << 16; std::memcpy(&v, &w, 4);
                        } else if (s >= 0 && d < kNope) {
                            float sc; std::memcpy(&sc, tok + token_layout().scale_offset() + 4 * (d / 128), 4);
                            v = e4m3(tok[d]) * sc;
                        } else if (s >= 0) {
                            uint16_t b; std::memcpy(&b, tok + token_layout().rope_offset() + 2 * (d - kNope), 2);
                            uint32_t w = (uint32_t)b << 16; std::memcpy(&v, &w, 4);
                        }
                        tile[j][d] = v;
                    }
                }
                float s[kTileKeys], gmax[2] = {neg_inf(), neg_inf()};
                for (uint32_t j = 0; j < kTileKeys; ++j) {
                    float acc = 0.0f;
                    for (int d = 0; d < kLatent; ++d) acc += qh[d] * tile[j][d];
                    s[j] = valid[j] ? acc * scale : neg_inf();
                    gmax[j / kGroupKeys] = fmaxf(gmax[j / kGroupKeys], s[j]);
                }
                const Step st = online_step(m, fmaxf(gmax[0], gmax[1]));
                m = st.m_new;
                float p[kTileKeys];
                for (int g = 0; g < 2; ++g) {
                    l[g] *= st.alpha;
                    for (int j = g * kGroupKeys; j < (g + 1) * kGroupKeys; ++j) {
                        const float w = exp_fast(s[j] - st.base);
                        l[g] += w;
                        p[j] = bf16(w);
                    }
                }
                for (int c = 0; c < kNope; ++c) {
                    float acc = o[c] * st.alpha;
                    for (uint32_t j = 0; j < kTileKeys; ++j) acc += p[j] * tile[j][c];
                    o[c] = acc;
                }
            }
            const float sum = l[0] + l[1];
            if (part == kWhole) {
                const size_t qi = (size_t)row * heads + h;
                for (int c = 0; c < kNope; ++c) out[qi * kNope + c] = keys == 0 ? 0.0f : o[c] * (1.0f / sum);
            } else {
                const uint64_t pi = partial_index(part, heads, h);
                for (int c = 0; c < kNope; ++c) part_acc[pi * kNope + c] = o[c];
                float* stat = &part_stat[pi * 3];
                stat[0] = m; stat[1] = sum; stat[2] = (float)keys;
            }
        }
    }
    // flashseek_mla_decode_fp8_combine_f32, one (merge, head) at a time.
    for (uint32_t mi = 0; mi < n_merges; ++mi) {
        const uint32_t row = merges[3 * mi], first = merges[3 * mi + 1], count = merges[3 * mi + 2];
        for (uint32_t h = 0; h < heads; ++h) {
            float mx = neg_inf(); unsigned n = 0;
            for (uint32_t s = 0; s < count; ++s) {
                const float* stat = &part_stat[partial_index(first + s, heads, h) * 3];
                if (stat[2] > 0.0f) { mx = fmaxf(mx, stat[0]); ++n; }
            }
            std::vector<float> w(count, 0.0f); float total = 0.0f;
            for (uint32_t s = 0; s < count; ++s) {
                const float* stat = &part_stat[partial_index(first + s, heads, h) * 3];
                if (stat[2] > 0.0f) {
                    w[s] = stat[0] == mx ? 1.0f : std::exp(stat[0] - mx);
                    total += w[s] * stat[1];
                }
            }
            for (int c = 0; c < kNope; ++c) {
                float a = 0.0f;
                for (uint32_t s = 0; s < count; ++s) a = std::fma(w[s], part_acc[partial_index(first + s, heads, h) * kNope + c], a);
                out[((size_t)row * heads + h) * kNope + c] = n == 0 ? 0.0f : a / total;
            }
        }
    }
    std::fwrite(out.data(), 4, out.size(), stdout);
    return 0;
}
"#;
