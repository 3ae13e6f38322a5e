//! The Hopper kernels' common index math (`csrc/common/sm90_layout.cuh`, used by the FP8 GEMM, the
//! lightning indexer and the MLA decode) compiled for the host and checked against independent
//! formulations: the 128-byte swizzle (both forms) against CuTe's `Swizzle<3, 4, 3>` and the
//! hardware's documented pattern, a bijection; the wgmma shared-memory descriptor against the PTX
//! ISA's field table (hand-encoded values) and, with its K-step advance, read through the ISA's
//! canonical K-major layout back to the bytes the TMA stored; the wgmma f32 accumulator map
//! against the PTX ISA's D-fragment figure, covering every (row, col) of a 64xN tile once, and its
//! inverse within a thread; the mbarrier ring's stages and parities in a simulation of a producer
//! and consumer warps under random interleavings. The kernels' own layouts are tested in
//! `gemm_index_math.rs`, `indexer_index_math.rs` and `mla_index_math.rs`. Needs a C++ compiler
//! (`c++`); skips without one.

mod host_cpp;

use std::collections::HashSet;

const HEADER: &str = "#include \"common/sm90_layout.cuh\"\n#include <cstdio>\n#include <cstdint>\nusing namespace \
                      flashseek::sm90;\n";

fn run(name: &str, main_body: &str) -> Option<Vec<u64>> {
    host_cpp::run(name, &format!("{HEADER}int main() {{\n{main_body}\n  return 0;\n}}\n"))
        .map(|o| host_cpp::numbers(&o))
}

/// CuTe's `Swizzle<3, 4, 3>` on a byte offset from a 1024-aligned base: bits 7..9 XORed into
/// bits 4..6.
fn cute_swizzle(offset: u64) -> u64 {
    offset ^ (((offset >> 7) & 7) << 4)
}

/// The 128-byte swizzle as the PTX ISA and CUDA's TMA documentation draw it: within each
/// 1024-byte atom of 8 rows of 128 bytes, 16-byte chunk c of row r lands at chunk c XOR r.
fn swizzle_reference(offset: u64) -> u64 {
    let row = (offset / 128) % 8;
    let chunk = (offset / 16) % 8;
    offset - chunk * 16 + ((chunk ^ row) * 16)
}

/// Both forms of the swizzle: the address form over four atoms and the (row, byte) form over a
/// 128-row tile, against CuTe and the documented pattern; each permutes the 16-byte chunks of an
/// atom (bytes inside kept), and a tile of 128 rows of 128 bytes fills its 16 KB exactly once.
#[test]
fn swizzle_is_cutes_and_the_hardware_pattern_and_a_bijection() {
    let Some(got) = run(
        "sm90_swizzle",
        "  for (uint32_t o = 0; o < 4096; ++o) std::printf(\"%u \", swizzle_128b(o));\n  for (uint32_t r = 0; r < 128; \
         ++r) for (uint32_t b = 0; b < 128; ++b) std::printf(\"%u \", swizzle_128b(r, b));",
    ) else {
        return;
    };
    let (flat, rows) = got.split_at(4096);
    for (o, &s) in flat.iter().enumerate() {
        assert_eq!(s, cute_swizzle(o as u64), "swizzle of {o}");
        assert_eq!(s, swizzle_reference(o as u64), "swizzle of {o}");
    }
    for atom in flat.chunks_exact(1024) {
        let set: HashSet<u64> = atom.iter().copied().collect();
        assert_eq!(set.len(), 1024);
        assert_eq!(atom.iter().min().map(|m| m % 1024), Some(0));
    }
    let mut seen = vec![false; 128 * 128];
    for (i, &o) in rows.iter().enumerate() {
        assert_eq!(o, cute_swizzle(i as u64), "row {} byte {}", i / 128, i % 128);
        assert!(!std::mem::replace(&mut seen[o as usize], true), "offset {o} twice");
    }
    assert_eq!(rows.len(), 128 * 128);
}

/// Addresses of operand tiles (1024-aligned) across the 228 KB of shared memory, up to the
/// descriptor's 18-bit reach.
const ADDRS: [u32; 8] = [0, 0x400, 0x1000, 0x2_0000, 0x3_8400, 0x3_fc00, 7168, 64512];

#[test]
fn descriptor_fields_match_the_ptx_isa() {
    let mut body = String::new();
    for a in ADDRS {
        body += &format!(
            "  for (uint32_t ks = 0; ks < 4; ++ks) std::printf(\"%llu \", (unsigned long \
             long)desc_advance_k(k_major_sw128_desc({a}u), ks));\n  std::printf(\"%llu \", (unsigned long \
             long)smem_desc({a}u, kKMajorLbo, kSwizzleAtom, kSwizzle128B));\n"
        );
    }
    // The general encoder with the MN-major operand's offsets of the MLA decode (LBO one 8 KB
    // chunk, SBO one atom) and with the fields' widest values.
    body +=
        "  std::printf(\"%llu %llu \", (unsigned long long)smem_desc(0x1000u, 8192u, 1024u, kSwizzle128B), (unsigned \
             long long)smem_desc(0x3fff0u, 0x3fff0u, 0x3fff0u, 3u));";
    let Some(got) = run("sm90_descriptor", &body) else { return };
    assert_eq!(got.len(), ADDRS.len() * 5 + 2);
    // Hand-encoded from the ISA's table for address 0x1000: start 0x1000 >> 4 = 0x100 in bits
    // 0-13, leading byte offset 1 (unused, CUTLASS's value) in 16-29, stride byte offset
    // 1024 >> 4 = 0x40 in 32-45, base offset 0 in 49-51, layout type 1 (128B swizzle) in 62-63.
    assert_eq!(got[10], 0x4000_0040_0001_0100);
    // The third K step starts 64 bytes on: 0x1040 >> 4 = 0x104.
    assert_eq!(got[12], 0x4000_0040_0001_0104);
    for (i, a) in ADDRS.iter().enumerate() {
        let at = i * 5;
        assert_eq!(got[at + 4], got[at], "k_major_sw128_desc is smem_desc with K-major offsets at {a:#x}");
        for ks in 0..4u64 {
            let d = got[at + ks as usize];
            assert_eq!(d & 0x3fff, u64::from(a >> 4) + 2 * ks, "start address of {a:#x} step {ks}");
            assert_eq!((d >> 14) & 0x3, 0, "reserved bits 14-15");
            assert_eq!((d >> 16) & 0x3fff, 1, "leading byte offset");
            assert_eq!((d >> 30) & 0x3, 0, "reserved bits 30-31");
            assert_eq!((d >> 32) & 0x3fff, 1024 >> 4, "stride byte offset");
            assert_eq!((d >> 46) & 0x7, 0, "reserved bits 46-48");
            assert_eq!((d >> 49) & 0x7, 0, "base offset");
            assert_eq!((d >> 52) & 0x3ff, 0, "reserved bits 52-61");
            assert_eq!(d >> 62, 1, "layout type 128B swizzle");
        }
    }
    let (mn, widest) = (got[ADDRS.len() * 5], got[ADDRS.len() * 5 + 1]);
    assert_eq!(mn, 0x100 | (8192 >> 4) << 16 | (1024 >> 4) << 32 | 1 << 62);
    assert_eq!(widest, 0x3fff | 0x3fff << 16 | 0x3fff << 32 | 3 << 62, "each field masked to its width");
}

/// The shared-memory byte a wgmma reads for element (row, byte `b` of the K slice) of a K-major
/// operand in the 128-byte swizzle, from its descriptor: the PTX ISA's canonical layout (8-row
/// groups `stride` bytes apart, rows 128 bytes apart within one), then the swizzle on the address
/// bits.
fn wgmma_address(desc: u64, row: u64, b: u64) -> u64 {
    assert_eq!(desc >> 62, 1, "128-byte swizzle");
    assert_eq!((desc >> 49) & 7, 0, "base offset");
    let start = (desc & 0x3fff) << 4;
    let stride = ((desc >> 32) & 0x3fff) << 4;
    cute_swizzle(start + row / 8 * stride + row % 8 * 128 + b)
}

/// Every K step (32 bytes) of every row of a 128-row K-major operand, read through the descriptor
/// and its advance as the hardware decodes them, is the byte the TMA's 128-byte swizzle (or a
/// kernel's stores through `swizzle_128b(row, byte)`) put there: the two sides of every
/// operand tile meet.
#[test]
fn descriptors_read_what_the_tma_stored() {
    let mut body = String::new();
    for a in ADDRS {
        body += &format!(
            "  for (uint32_t k = 0; k < 4; ++k) std::printf(\"%llu \", (unsigned long \
             long)desc_advance_k(k_major_sw128_desc({a}u), k));\n  for (uint32_t r = 0; r < 128; ++r) for (uint32_t b = \
             0; b < 128; ++b) std::printf(\"%u \", {a}u + swizzle_128b(r, b));\n"
        );
    }
    let Some(got) = run("sm90_desc_reads", &body) else { return };
    let per = 4 + 128 * 128;
    assert_eq!(got.len(), ADDRS.len() * per);
    for (i, a) in ADDRS.iter().enumerate() {
        let (descs, stored) = got[i * per..(i + 1) * per].split_at(4);
        for (k, &desc) in descs.iter().enumerate() {
            for row in 0..128u64 {
                for b in 0..32u64 {
                    let byte = 32 * k as u64 + b;
                    let tma = u64::from(*a) + cute_swizzle(row * 128 + byte);
                    assert_eq!(wgmma_address(desc, row, b), tma, "tile {a:#x} step {k} row {row} byte {b}");
                    assert_eq!(stored[(row * 128 + byte) as usize], tma, "store of row {row} byte {byte}");
                }
            }
        }
    }
}

/// The PTX ISA's figure of the wgmma D fragment (m64nNk*, f32): warp w of the warpgroup owns
/// rows 16w .. 16w + 16; for each 8-column chunk j, lane l holds values 4j and 4j + 1 at row
/// l / 4, columns 8j + 2 (l % 4) and the next, and values 4j + 2, 4j + 3 eight rows below.
fn fragment_reference(t: u64, i: u64) -> (u64, u64) {
    let (warp, lane) = (t / 32, t % 32);
    let (chunk, within) = (i / 4, i % 4);
    let row = 16 * warp + lane / 4 + if within >= 2 { 8 } else { 0 };
    let col = 8 * chunk + 2 * (lane % 4) + within % 2;
    (row, col)
}

/// The map against the figure for every thread and value of the widest N (256); for every N the
/// kernels use (32 and 256: the MLA decode; 64 and 128: the GEMM and the indexer) and the
/// smallest, the 128 threads' N / 2 values cover the 64 x N tile exactly once; and frag_index
/// inverts the map within a thread.
#[test]
fn fragment_map_is_the_isa_figure_and_covers_the_tile_once() {
    let Some(got) = run(
        "sm90_fragment",
        "  for (uint32_t t = 0; t < 128; ++t) for (uint32_t i = 0; i < 128; ++i) std::printf(\"%u %u \", frag_row(t, i), \
         frag_col(t, i));\n  for (uint32_t t = 0; t < 128; ++t) for (uint32_t h = 0; h < 2; ++h) for (uint32_t j = 0; j \
         < 32; ++j) for (uint32_t c = 0; c < 2; ++c) { const uint32_t i = frag_index(h, j, c); std::printf(\"%u %u %u \", \
         i, frag_row(t, i), frag_col(t, i)); }",
    ) else {
        return;
    };
    let (map, inverse) = got.split_at(2 * 128 * 128);
    let at = |t: u64, i: u64| {
        let k = 2 * (t * 128 + i) as usize;
        (map[k], map[k + 1])
    };
    for t in 0..128 {
        for i in 0..128 {
            assert_eq!(at(t, i), fragment_reference(t, i), "thread {t} value {i}");
        }
    }
    for n in [8u64, 32, 64, 128, 256] {
        let mut seen = HashSet::new();
        for t in 0..128 {
            for i in 0..n / 2 {
                let (r, c) = at(t, i);
                assert!(r < 64 && c < n, "thread {t} value {i}: ({r}, {c}) outside 64x{n}");
                assert!(seen.insert((r, c)), "({r}, {c}) twice at N = {n}");
            }
        }
        assert_eq!(seen.len() as u64, 64 * n);
    }
    let mut it = inverse.chunks_exact(3);
    for t in 0..128u64 {
        for h in 0..2 {
            for j in 0..32 {
                for c in 0..2 {
                    let e = it.next().expect("an inverse entry");
                    assert!(e[0] < 128);
                    assert_eq!((e[1], e[2]), (fragment_reference(t, 0).0 + 8 * h, 8 * j + 2 * (t % 4) + c));
                }
            }
        }
    }
    assert!(it.next().is_none());
}

/// The mbarrier ring, simulated: a producer thread and `warps` consumer warps step in a random
/// order (each step only if its wait would pass), with the header's stage and parity functions,
/// one expect_tx arrival on `full` per iteration and one arrival per consumer warp on `empty`.
/// TMA loads land at random later steps. Checks that every consumer reads each stage holding its
/// own iteration, that the producer never overwrites a stage some warp has not released or a
/// load is still filling, and that the run never deadlocks; for the ring sizes the kernels use
/// (2: the MLA decode; 7 and 8: the GEMM; 8: the indexer) and others, the iteration counter as
/// u64 (the GEMM's, counted across tiles) and u32 (the others').
const RING_SIM: &str = r#"
#include "common/sm90_layout.cuh"
#include <cstdio>
#include <cstdlib>
#include <vector>
using namespace flashseek::sm90;

// An mbarrier: the phase in progress, its arrivals still expected and its pending tx bytes.
struct Barrier {
    unsigned count, pending, phase;
    long tx;
    void init(unsigned c) { count = c; pending = c; phase = 0; tx = 0; }
    // try_wait.parity(p): true once the phase of parity p has completed, i.e. the phase in
    // progress has the other parity.
    bool passed(unsigned parity) const { return (phase & 1u) != parity; }
    void complete_if_done() { if (pending == 0 && tx == 0) { ++phase; pending = count; } }
    void arrive() { --pending; complete_if_done(); }
    void arrive_expect_tx(long bytes) { tx += bytes; --pending; complete_if_done(); }
    void complete_tx(long bytes) { tx -= bytes; complete_if_done(); }
};

template <class Index>
int run(unsigned st, unsigned warps, unsigned total, unsigned seed) {
    const long bytes = 4096;
    std::srand(seed);
    std::vector<Barrier> full(st), empty(st);
    for (unsigned s = 0; s < st; ++s) { full[s].init(1); empty[s].init(warps); }
    std::vector<long> content(st, -1);     // the iteration a stage holds
    std::vector<unsigned> readers(st, 0);  // warps that read it and have not released it
    Index produced = 0;
    std::vector<Index> consumed(warps, 0);
    std::vector<long> inflight(st, -1);    // a load in flight: lands later, at a random step
    for (unsigned long long steps = 0;; ++steps) {
        bool done = produced == total;
        for (unsigned w = 0; w < warps; ++w) done = done && consumed[w] == total;
        if (done) return 0;
        if (steps > 100000000ull) { std::printf("deadlock\n"); return 1; }
        const unsigned who = std::rand() % (warps + 2);
        if (who == warps) {  // the producer
            if (produced == total) continue;
            const unsigned s = ring_stage(produced, st);
            if (!empty[s].passed(ring_empty_parity(produced, st))) continue;
            if (readers[s] != 0 || inflight[s] >= 0) { std::printf("overwrite\n"); return 1; }
            full[s].arrive_expect_tx(bytes);
            inflight[s] = (long)produced;
            ++produced;
        } else if (who == warps + 1) {  // the copy engine lands one load
            const unsigned s = std::rand() % st;
            if (inflight[s] < 0) continue;
            content[s] = inflight[s];
            inflight[s] = -1;
            readers[s] = warps;
            full[s].complete_tx(bytes);
        } else {  // consumer warp `who`: wait full, read, release
            const Index it = consumed[who];
            if (it == total) continue;
            const unsigned s = ring_stage(it, st);
            if (!full[s].passed(ring_parity(it, st))) continue;
            if (content[s] != (long)it) { std::printf("stale read\n"); return 1; }
            --readers[s];
            empty[s].arrive();
            ++consumed[who];
        }
    }
}

int main() {
    int bad = 0;
    for (unsigned st : {1u, 2u, 3u, 7u, 8u}) {
        for (unsigned warps : {1u, 4u, 8u}) {
            for (unsigned total : {1u, 3u, 7u, 8u, 9u, 57u, 200u}) {
                for (unsigned seed = 1; seed <= 8; ++seed) {
                    bad += run<unsigned long long>(st, warps, total, seed);
                    bad += run<uint32_t>(st, warps, total, seed + 100);
                }
            }
        }
    }
    std::printf("%d\n", bad);
}
"#;

#[test]
fn mbarrier_ring_never_races_or_deadlocks() {
    let Some(out) = host_cpp::run("sm90_ring", RING_SIM) else { return };
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.trim(), "0", "ring simulation failures:\n{text}");
}

/// The ring's values themselves for the first iterations of a 2-stage ring (the MLA decode's),
/// as its comment derives them: stage it % 2, full parity (it / 2) % 2, empty parity the other.
#[test]
fn ring_values_of_a_two_stage_ring() {
    let Some(got) = run(
        "sm90_ring_values",
        "  for (uint32_t it = 0; it < 64; ++it) std::printf(\"%u %u %u \", ring_stage(it, 2), ring_parity(it, 2), \
         ring_empty_parity(it, 2));",
    ) else {
        return;
    };
    for (it, v) in got.chunks_exact(3).enumerate() {
        let it = it as u64;
        assert_eq!((v[0], v[1], v[2]), (it % 2, (it / 2) % 2, 1 - (it / 2) % 2), "iteration {it}");
    }
}
