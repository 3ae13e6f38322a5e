//! Multi-head latent attention on the CPU backend against naive attention over EXPANDED keys and
//! values (`tests/reference`): `absorb_q` + `mla_decode` + `absorb_out` together over a real
//! paged latent cache (several sequences, non-contiguous shuffled blocks of
//! `kv_cache::BLOCK_SIZE`, contexts crossing block boundaries), dense causal and sparse (top-k
//! lists with -1 padding and entries past the query's position, which must be ignored); and
//! `mla_prefill` over several sequences with cached pasts (`start_pos > 0`), dense and sparse.
//!
//! Cache rows no sequence owns (and the unused tail of each sequence's last block) hold NaN, so
//! reading anything outside a query's context shows up as a NaN mismatch.

mod common;
mod reference;

use flashseek::backend::{Backend, CpuBackend, MlaDims, Pages, PrefillSeq, Queries};
use flashseek::kv_cache::BLOCK_SIZE;
use flashseek::tensor::{CacheTensor, IntTensor, Tensor};
use proptest::prelude::*;
use reference::{self as rf, WType};

/// Per-row error allowed against the f64 reference (rows of `heads · v`), relative to the row's
/// error magnitude (`reference::attend`): its relative error where nothing cancels.
const TOL: f64 = 1e-5;

fn tensor(rows: usize, cols: usize, data: Vec<f32>) -> Tensor<CpuBackend> {
    Tensor::<CpuBackend>::from_vec(rows, cols, data).expect("tensor")
}

fn ints(rows: usize, cols: usize, data: Vec<i32>) -> IntTensor<CpuBackend> {
    IntTensor::<CpuBackend>::from_vec(rows, cols, data).expect("int tensor")
}

/// Small MLA shapes (odd sizes, one more head than a CPU head group of 16), and a scaled-down
/// DeepSeek-like one.
fn dims_strategy() -> impl Strategy<Value = MlaDims> {
    let random = (prop_oneof![3 => 1usize..5, 1 => Just(17usize)], 1usize..24, 1usize..9, 1usize..20, 1usize..70)
        .prop_map(|(heads, nope, rope, v, kv_lora)| MlaDims { heads, nope, rope, v, kv_lora });
    prop_oneof![4 => random, 1 => Just(MlaDims { heads: 2, nope: 32, rope: 16, v: 32, kv_lora: 130 })]
}

fn wtype_strategy() -> impl Strategy<Value = WType> {
    prop_oneof![Just(WType::F32), Just(WType::Bf16), Just(WType::Fp8)]
}

fn gen_queries(rng: &mut rf::Rng, pc: &rf::PagedCache) -> (Vec<u32>, Vec<u32>) {
    let mut q = Vec::new();
    for (s, &len) in pc.lens.iter().enumerate() {
        q.push((len as u32 - 1, s as u32));
        for _ in 0..rng.below(3) {
            q.push((rng.below(len) as u32, s as u32));
        }
    }
    rng.shuffle(&mut q);
    q.into_iter().unzip()
}

/// A top-k row of width `k` for a query at `pos` of a sequence of `len` positions: at least one
/// valid position of `0..=pos` (distinct), the rest -1 or positions past `pos` (in the sequence,
/// or beyond its block table), shuffled.
fn gen_topk_row(rng: &mut rf::Rng, pos: usize, len: usize, k: usize) -> Vec<i32> {
    let mut valid: Vec<i32> = (0..=pos as i32).collect();
    rng.shuffle(&mut valid);
    let n_valid = 1 + rng.below(k.min(pos + 1));
    let mut row: Vec<i32> = valid[..n_valid].to_vec();
    while row.len() < k {
        row.push(match rng.below(3) {
            0 => -1,
            1 if pos + 1 < len => (pos + 1 + rng.below(len - pos - 1)) as i32,
            _ => (pos + 1 + rng.below(200)) as i32,
        });
    }
    rng.shuffle(&mut row);
    row
}

#[test]
fn mla_decode_dense_and_sparse_vs_expanded_attention() {
    let b = CpuBackend::new();
    let lens = prop::collection::vec(prop_oneof![1usize..8, 8usize..200, Just(64usize), Just(65usize)], 1..4);
    let strategy = (dims_strategy(), wtype_strategy(), lens, any::<bool>(), 1usize..48, any::<u64>());
    rf::run("mla decode", 128, strategy, |(d, wt, lens, sparse, k, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let (qk, lat) = (d.nope + d.rope, d.kv_lora + d.rope);
        let (host, refw) =
            rf::gen_linear(&mut rng, wt, d.heads * (d.nope + d.v), d.kv_lora, 1.0 / (d.kv_lora as f64).sqrt());
        let kv_b = b.load_linear(&host).expect("load_linear");
        let pc = rf::PagedCache::new(&mut rng, lens.clone(), lat, |r| r.normals(lat, 1.0));
        let (pos, seq) = gen_queries(&mut rng, &pc);
        let m = pos.len();
        let topk: Option<Vec<i32>> = sparse
            .then(|| (0..m).flat_map(|i| gen_topk_row(&mut rng, pos[i] as usize, lens[seq[i] as usize], k)).collect());
        // q may carry extra rows that absorb_q must leave out.
        let extra = rng.below(3);
        let q = rng.normals((m + extra) * d.heads * qk, 1.0);
        let scale = (rng.range(0.3, 1.0) / (qk as f64).sqrt()) as f32;

        let mut q_lat = tensor(m, d.heads * lat, vec![f32::NAN; m * d.heads * lat]);
        b.absorb_q(&tensor(m + extra, d.heads * qk, q.clone()), &kv_b, d, &mut q_lat).expect("absorb_q");
        let mut o_lat = tensor(m, d.heads * d.kv_lora, vec![f32::NAN; m * d.heads * d.kv_lora]);
        let queries = Queries { pos: &pos, seq: &seq };
        let topk_t = topk.as_ref().map(|v| ints(m, k, v.clone()));
        let cache = CacheTensor::from_f32(pc.slots, lat, pc.cache.clone()).expect("cache");
        b.mla_decode(&q_lat, &cache, queries, pc.pages(), topk_t.as_ref(), scale, d, &mut o_lat).expect("mla_decode");
        let mut out = tensor(m, d.heads * d.v, vec![f32::NAN; m * d.heads * d.v]);
        b.absorb_out(&o_lat, &kv_b, d, &mut out).expect("absorb_out");

        let want = rf::mla_decode(
            &q,
            &refw.dequant(),
            &pc.cache,
            &pc.tables,
            &pos,
            &seq,
            topk.as_deref().map(|v| (v, k)),
            scale,
            d,
        );
        let what = format!("mla decode {d:?} kv_b {wt:?} lens {lens:?} pos {pos:?} sparse {sparse} (k {k})");
        let (r, norm) = rf::assert_close_to_magnitude(&what, out.data(), &want.out, &want.mag, d.heads * d.v, TOL);
        t.record(&format!("{} kv_b {wt:?}", if sparse { "sparse" } else { "dense" }), &r);
        t.record_value("error / magnitude (decode)", norm, format!("{norm:.3e}"));
        t.count("query rows", m as u64);
        Ok(())
    });
}

#[test]
fn mla_decode_missing_pages_are_errors() {
    let b = CpuBackend::new();
    let d = MlaDims { heads: 2, nope: 4, rope: 2, v: 3, kv_lora: 8 };
    let lat = d.latent();
    let mut rng = rf::Rng::new(9);
    // Two sequences of 70 and 10 positions: two blocks and one.
    let pc = rf::PagedCache::new(&mut rng, vec![70, 10], lat, |r| r.normals(lat, 1.0));
    let cache = CacheTensor::from_f32(pc.slots, lat, pc.cache.clone()).expect("cache");
    let q_lat = tensor(1, d.heads * lat, rng.normals(d.heads * lat, 1.0));
    let mut out = tensor(1, d.heads * d.kv_lora, vec![0.0; d.heads * d.kv_lora]);
    let mut decode = |pos: u32, seq: u32, pages: Pages, topk: Option<Vec<i32>>| {
        let t = topk.map(|v| ints(1, v.len(), v));
        b.mla_decode(&q_lat, &cache, Queries { pos: &[pos], seq: &[seq] }, pages, t.as_ref(), 0.5, d, &mut out)
    };
    // The control: inside the table.
    assert!(decode(69, 0, pc.pages(), None).is_ok());
    // Positions past the block table (dense, and a sparse entry at or before pos).
    assert!(decode(128, 0, pc.pages(), None).is_err(), "dense decode past the block table returned Ok");
    assert!(decode(64, 1, pc.pages(), None).is_err(), "dense decode past the block table returned Ok");
    assert!(decode(130, 0, pc.pages(), Some(vec![3, 129, -1])).is_err(), "sparse entry past the table returned Ok");
    // A sparse entry past pos is ignored even where no page holds it.
    assert!(decode(5, 1, pc.pages(), Some(vec![3, 500, -1])).is_ok(), "an entry past pos was not ignored");
    // A sequence the table does not know.
    assert!(decode(0, 2, pc.pages(), None).is_err(), "decode of an unknown sequence returned Ok");
    // A block id past the cache.
    let bad_blocks: Vec<u32> = pc.blocks.iter().map(|_| (pc.slots / BLOCK_SIZE) as u32 + 1).collect();
    let bad = Pages { block_size: BLOCK_SIZE, blocks: &bad_blocks, starts: &pc.starts };
    assert!(decode(3, 1, bad, None).is_err(), "a block id past the cache returned Ok");
}

/// Prefill sequences laid out with gaps: query rows and kv rows of each, and the totals.
struct PrefillLayout {
    seqs: Vec<PrefillSeq>,
    t_rows: usize,
    kv_rows: usize,
}

fn gen_prefill_layout(rng: &mut rf::Rng, shapes: &[(usize, usize)]) -> PrefillLayout {
    let (mut q_row, mut kv_row) = (rng.below(3), rng.below(3));
    let mut seqs = Vec::new();
    for &(start_pos, q_len) in shapes {
        seqs.push(PrefillSeq { q_start: q_row, q_len, kv_start: kv_row, start_pos });
        q_row += q_len + rng.below(3);
        kv_row += start_pos + q_len + rng.below(3);
    }
    PrefillLayout { seqs, t_rows: q_row, kv_rows: kv_row }
}

#[test]
fn mla_prefill_dense_and_sparse_vs_naive() {
    let b = CpuBackend::new();
    let shape = (prop_oneof![Just(0usize), 1usize..150], prop_oneof![1usize..8, 8usize..40]);
    let strategy = (dims_strategy(), prop::collection::vec(shape, 1..4), any::<bool>(), 1usize..48, any::<u64>());
    rf::run("mla prefill", 96, strategy, |(d, shapes, sparse, k, seed), t| {
        let mut rng = rf::Rng::new(seed);
        let (qk, kvw) = (d.nope + d.rope, d.nope + d.v);
        let lay = gen_prefill_layout(&mut rng, &shapes);
        let q = rng.normals(lay.t_rows * d.heads * qk, 1.0);
        // kv / kpe rows outside every sequence's context are NaN.
        let mut kv = vec![f32::NAN; lay.kv_rows * d.heads * kvw];
        let mut kpe = vec![f32::NAN; lay.kv_rows * d.rope];
        for s in &lay.seqs {
            for r in s.kv_start..s.kv_start + s.start_pos + s.q_len {
                for v in &mut kv[r * d.heads * kvw..(r + 1) * d.heads * kvw] {
                    *v = rng.normal() as f32;
                }
                for v in &mut kpe[r * d.rope..(r + 1) * d.rope] {
                    *v = rng.normal() as f32;
                }
            }
        }
        let topk: Option<Vec<i32>> = sparse.then(|| {
            let mut v = vec![-1; lay.t_rows * k];
            for s in &lay.seqs {
                for j in 0..s.q_len {
                    let row = gen_topk_row(&mut rng, s.start_pos + j, s.start_pos + s.q_len, k);
                    v[(s.q_start + j) * k..(s.q_start + j + 1) * k].copy_from_slice(&row);
                }
            }
            v
        });
        let scale = (rng.range(0.3, 1.0) / (qk as f64).sqrt()) as f32;
        let sentinel = 7.25f32;
        let mut out = tensor(lay.t_rows, d.heads * d.v, vec![sentinel; lay.t_rows * d.heads * d.v]);
        let topk_t = topk.as_ref().map(|v| ints(lay.t_rows, k, v.clone()));
        b.mla_prefill(
            &tensor(lay.t_rows, d.heads * qk, q.clone()),
            &tensor(lay.kv_rows, d.heads * kvw, kv.clone()),
            &tensor(lay.kv_rows, d.rope, kpe.clone()),
            &lay.seqs,
            topk_t.as_ref(),
            scale,
            d,
            &mut out,
        )
        .expect("mla_prefill");
        let want = rf::mla_prefill(&q, &kv, &kpe, &lay.seqs, lay.t_rows, topk.as_deref().map(|v| (v, k)), scale, d);
        let w = d.heads * d.v;
        let (mut got_rows, mut want_rows, mut mag_rows) = (Vec::new(), Vec::new(), Vec::new());
        for (r, wr) in want.iter().enumerate() {
            let g = &out.data()[r * w..(r + 1) * w];
            match wr {
                Some((wr, mr)) => {
                    got_rows.extend_from_slice(g);
                    want_rows.extend_from_slice(wr);
                    mag_rows.extend_from_slice(mr);
                }
                None => {
                    prop_assert!(g.iter().all(|&v| v == sentinel), "row {} belongs to no sequence but was written", r)
                }
            }
        }
        let what = format!("mla prefill {d:?} seqs {:?} sparse {sparse} (k {k})", lay.seqs);
        let (r, norm) = rf::assert_close_to_magnitude(&what, &got_rows, &want_rows, &mag_rows, w, TOL);
        t.record(if sparse { "sparse" } else { "dense" }, &r);
        t.record_value("error / magnitude (prefill)", norm, format!("{norm:.3e}"));
        t.count("query rows", (got_rows.len() / w) as u64);
        Ok(())
    });
}

#[test]
fn mla_prefill_bad_sequences_are_errors() {
    let b = CpuBackend::new();
    let d = MlaDims { heads: 2, nope: 4, rope: 2, v: 3, kv_lora: 8 };
    let (qk, kvw) = (d.qk(), d.nope + d.v);
    let q = tensor(10, d.heads * qk, vec![0.1; 10 * d.heads * qk]);
    let kv = tensor(20, d.heads * kvw, vec![0.1; 20 * d.heads * kvw]);
    let kpe = tensor(20, d.rope, vec![0.1; 20 * d.rope]);
    let mut out = tensor(10, d.heads * d.v, vec![0.0; 10 * d.heads * d.v]);
    let mut run = |seqs: &[PrefillSeq]| b.mla_prefill(&q, &kv, &kpe, seqs, None, 0.5, d, &mut out);
    let s = |q_start, q_len, kv_start, start_pos| PrefillSeq { q_start, q_len, kv_start, start_pos };
    assert!(run(&[s(0, 5, 0, 3), s(5, 5, 8, 7)]).is_ok(), "the control");
    assert!(run(&[s(0, 5, 0, 0), s(4, 5, 5, 0)]).is_err(), "overlapping query rows");
    assert!(run(&[s(5, 5, 0, 0), s(0, 5, 5, 0)]).is_err(), "sequences out of order");
    assert!(run(&[s(6, 5, 0, 0)]).is_err(), "query rows past q");
    assert!(run(&[s(0, 5, 10, 6)]).is_err(), "context past kv");
    let short_kpe = tensor(19, d.rope, vec![0.1; 19 * d.rope]);
    assert!(
        b.mla_prefill(&q, &kv, &short_kpe, &[s(0, 1, 0, 0)], None, 0.5, d, &mut out).is_err(),
        "kpe rows != kv rows"
    );
}

/// Dims with empty heads (no query, key/value or latent columns) are errors, not a division by
/// zero.
#[test]
fn mla_empty_head_dims_are_errors() {
    let b = CpuBackend::new();
    let empty_qk = MlaDims { heads: 2, nope: 0, rope: 0, v: 3, kv_lora: 8 };
    let q = tensor(1, 0, vec![]);
    let kv = tensor(1, 2 * 3, vec![0.1; 6]);
    let kpe = tensor(1, 0, vec![]);
    let mut out = tensor(1, 2 * 3, vec![0.0; 6]);
    let seq = [PrefillSeq { q_start: 0, q_len: 1, kv_start: 0, start_pos: 0 }];
    assert!(b.mla_prefill(&q, &kv, &kpe, &seq, None, 0.5, empty_qk, &mut out).is_err(), "qk = 0");
    let no_heads = MlaDims { heads: 0, ..empty_qk };
    assert!(b.mla_prefill(&q, &kv, &kpe, &seq, None, 0.5, no_heads, &mut out).is_err(), "heads = 0");

    let empty_latent = MlaDims { heads: 1, nope: 0, rope: 0, v: 1, kv_lora: 0 };
    let q_lat = tensor(1, 0, vec![]);
    let cache = CacheTensor::from_f32(64, 0, vec![]).expect("cache");
    let mut out = tensor(1, 0, vec![]);
    let pages = Pages { block_size: 64, blocks: &[0], starts: &[0, 1] };
    let queries = Queries { pos: &[0], seq: &[0] };
    assert!(b.mla_decode(&q_lat, &cache, queries, pages, None, 0.5, empty_latent, &mut out).is_err(), "latent = 0");
}
