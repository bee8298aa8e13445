//! Causal grouped-query attention over the key/value cache, F32 or F16.
//!
//! The cache stores, per layer, each KV head's rows one after another (head-major: a head's
//! positions are one contiguous run, which attention streams; position-major rows, every head
//! of a position side by side, made each head's read a strided gather that took 1.8x as long at
//! 1,900 positions), and grows with the conversation (up to the context length) instead
//! of being allocated at full size. Attention reads the cached rows in place: K/V heads are
//! shared by `n_head / n_head_kv` query heads without being repeated, and nothing is copied per
//! token. Scores and softmax are F32, as llama.cpp computes them with flash attention off.
//!
//! [`KvType::F32`] is the exact mode: the results match llama.cpp run with an F32 cache. With
//! [`KvType::F16`] (llama.cpp's default) keys and values are rounded to halves as they are
//! stored (round to nearest even, as ggml's conversion) and widened again as each row is read:
//! half the memory, logits within a few hundredths of the F32 ones.

use std::fmt;
use std::str::FromStr;

use crate::backend::HostRows;
use crate::threads::pool;
use half::f16;
use half::slice::HalfFloatSliceExt;
use serde::{Deserialize, Serialize};

use crate::ops;

/// The element type of the key/value cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvType {
    /// Exact: what llama.cpp computes with `--cache-type-k f32 --cache-type-v f32`.
    F32,
    /// Half the memory (llama.cpp's default cache type).
    #[default]
    F16,
}

impl KvType {
    /// Bytes of one cached element.
    pub fn bytes(self) -> usize {
        match self {
            KvType::F32 => 4,
            KvType::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvType::F32 => "f32",
            KvType::F16 => "f16",
        }
    }
}

impl fmt::Display for KvType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KvType {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(KvType::F32),
            "f16" => Ok(KvType::F16),
            other => Err(format!(
                "unknown KV cache type '{other}': use f16 (half the memory) or f32 (exact)"
            )),
        }
    }
}

/// Per layer: keys and values, each `n_head_kv` runs of `cap` rows of `head_dim` (head-major),
/// `cap` being the buffer's length over `kv_dim`.
#[derive(Debug)]
enum Store {
    F32(Vec<Vec<f32>>, Vec<Vec<f32>>),
    F16(Vec<Vec<f16>>, Vec<Vec<f16>>),
}

/// One layer's cached keys and values, laid out as a [`KvLayout`] says.
#[derive(Clone, Copy, Debug)]
pub enum KvLayer<'a> {
    F32(&'a [f32], &'a [f32]),
    F16(&'a [f16], &'a [f16]),
}

/// Keys and values of every layer for the tokens seen so far.
#[derive(Debug)]
pub struct KvCache {
    store: Store,
    /// The tokens whose keys and values are cached, in order.
    tokens: Vec<u32>,
    kv_dim: usize,
    head_dim: usize,
    max_len: usize,
}

/// Copies saved `layers` (each KV head's `n` rows, one head after another) into the cache's `k`
/// and `v` of one element type (`rows` picks a saved layer's values of that type): false when a
/// layer is of the other type or not `n` rows long.
fn fill_layers<T: Copy + Default>(
    k: &mut [Vec<T>],
    v: &mut [Vec<T>],
    layers: &[(HostRows, HostRows)],
    n: usize,
    (kv_dim, hd, max_len): (usize, usize, usize),
    rows: impl Fn(&HostRows) -> Option<&[T]>,
) -> bool {
    let cap = capacity_for(0, n, max_len);
    for ((k, v), (sk, sv)) in k.iter_mut().zip(v).zip(layers) {
        let (Some(sk), Some(sv)) = (rows(sk), rows(sv)) else {
            return false;
        };
        if sk.len() != n * kv_dim || sv.len() != n * kv_dim {
            return false;
        }
        *k = regroup(sk, n, cap, n, kv_dim, hd);
        *v = regroup(sv, n, cap, n, kv_dim, hd);
    }
    true
}

/// A head-major buffer of `to_cap` positions holding the first `rows` positions of `src`, a
/// head-major buffer of `from_cap` positions (the rest default).
fn regroup<T: Copy + Default>(
    src: &[T],
    from_cap: usize,
    to_cap: usize,
    rows: usize,
    kv_dim: usize,
    hd: usize,
) -> Vec<T> {
    let mut out = vec![T::default(); to_cap * kv_dim];
    for g in 0..kv_dim / hd {
        out[g * to_cap * hd..][..rows * hd].copy_from_slice(&src[g * from_cap * hd..][..rows * hd]);
    }
    out
}

/// Positions a buffer of `cap` positions grows to when it must hold `need`: twice as many, at
/// least 256, at most `max_len` (but never fewer than `need`).
fn capacity_for(cap: usize, need: usize, max_len: usize) -> usize {
    (cap * 2).max(256).min(max_len).max(need)
}

/// Writes the position-major rows `new` (`kv_dim` elements each) at positions `pos..` of the
/// head-major `buf`, growing it geometrically (keeping positions `0..pos`) but never past
/// `max_len` positions: the cache of a long context stays small for short chats.
fn put_rows<T: Copy + Default>(
    buf: &mut Vec<T>,
    pos: usize,
    new: &[f32],
    (kv_dim, hd, max_len): (usize, usize, usize),
    convert: impl Fn(&[f32], &mut [T]),
) {
    let cap = buf.len() / kv_dim;
    let need = pos + new.len() / kv_dim;
    if cap < need {
        *buf = regroup(buf, cap, capacity_for(cap, need, max_len), pos, kv_dim, hd);
    }
    let cap = buf.len() / kv_dim;
    for (i, row) in new.chunks_exact(kv_dim).enumerate() {
        for (g, head) in row.chunks_exact(hd).enumerate() {
            convert(head, &mut buf[(g * cap + pos + i) * hd..][..hd]);
        }
    }
}

impl KvCache {
    /// A cache for `n_layer` layers of `n_head_kv` KV heads of `head_dim`, up to `max_len`
    /// positions.
    pub fn new(
        n_layer: usize,
        n_head_kv: usize,
        head_dim: usize,
        max_len: usize,
        kv_type: KvType,
    ) -> Self {
        let store = match kv_type {
            KvType::F32 => Store::F32(vec![Vec::new(); n_layer], vec![Vec::new(); n_layer]),
            KvType::F16 => Store::F16(vec![Vec::new(); n_layer], vec![Vec::new(); n_layer]),
        };
        Self {
            store,
            tokens: Vec::new(),
            kv_dim: n_head_kv * head_dim,
            head_dim,
            max_len,
        }
    }

    pub fn kv_type(&self) -> KvType {
        match self.store {
            Store::F32(..) => KvType::F32,
            Store::F16(..) => KvType::F16,
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    pub fn max_len(&self) -> usize {
        self.max_len
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets every position from `len` on (a conversation that diverged from the cache): the
    /// next `put` writes over them.
    pub fn truncate(&mut self, len: usize) {
        self.tokens.truncate(len);
    }

    pub fn clear(&mut self) {
        self.truncate(0);
    }

    /// Bytes held by the cache buffers.
    pub fn size_in_bytes(&self) -> usize {
        let elems: usize = match &self.store {
            Store::F32(k, v) => k.iter().chain(v).map(Vec::len).sum(),
            Store::F16(k, v) => k.iter().chain(v).map(Vec::len).sum(),
        };
        elems * self.kv_type().bytes()
    }

    /// Writes layer `il`'s keys and values for positions `len..len + t` (not yet committed).
    pub fn put(&mut self, il: usize, k_new: &[f32], v_new: &[f32]) {
        let pos = self.tokens.len();
        let dims = (self.kv_dim, self.head_dim, self.max_len);
        match &mut self.store {
            Store::F32(k, v) => {
                for (buf, new) in [(&mut k[il], k_new), (&mut v[il], v_new)] {
                    put_rows(buf, pos, new, dims, |a, b| b.copy_from_slice(a));
                }
            }
            Store::F16(k, v) => {
                for (buf, new) in [(&mut k[il], k_new), (&mut v[il], v_new)] {
                    put_rows(buf, pos, new, dims, |a, b| b.convert_from_f32_slice(a));
                }
            }
        }
    }

    /// Layer `il`'s keys and values including the rows written by `put`, and where they lie.
    pub fn layer(&self, il: usize) -> (KvLayer<'_>, KvLayout) {
        let (kv, len) = match &self.store {
            Store::F32(k, v) => (KvLayer::F32(&k[il], &v[il]), k[il].len()),
            Store::F16(k, v) => (KvLayer::F16(&k[il], &v[il]), k[il].len()),
        };
        (kv, KvLayout::head_major(len / self.kv_dim, self.head_dim))
    }

    /// Copies every layer's keys and values of positions `0..len` (see
    /// [`crate::backend::Backend::save_cache`]).
    /// Each KV head's rows are saved one after another (head-major, without the room to grow).
    pub fn save(&self, len: usize) -> Vec<(HostRows, HostRows)> {
        let n = len.min(self.tokens.len());
        let (kv_dim, hd) = (self.kv_dim, self.head_dim);
        fn copy<T: Copy + Default>(
            k: &[Vec<T>],
            v: &[Vec<T>],
            (n, kv_dim, hd): (usize, usize, usize),
            rows: fn(Vec<T>) -> HostRows,
        ) -> Vec<(HostRows, HostRows)> {
            let one = |b: &[T]| rows(regroup(b, b.len() / kv_dim, n, n, kv_dim, hd));
            k.iter().zip(v).map(|(k, v)| (one(k), one(v))).collect()
        }
        match &self.store {
            Store::F32(k, v) => copy(k, v, (n, kv_dim, hd), HostRows::F32),
            Store::F16(k, v) => copy(k, v, (n, kv_dim, hd), HostRows::F16),
        }
    }

    /// Makes `layers` (from [`KvCache::save`] of a cache like this one) the cache of `tokens`.
    /// On an error the cache is empty.
    pub fn restore(
        &mut self,
        tokens: &[u32],
        layers: &[(HostRows, HostRows)],
    ) -> Result<(), String> {
        let n = tokens.len();
        let dims = (self.kv_dim, self.head_dim, self.max_len);
        let mismatch = || {
            format!(
                "a saved KV cache of {} positions does not fit this cache",
                tokens.len()
            )
        };
        let n_layer = match &self.store {
            Store::F32(k, _) => k.len(),
            Store::F16(k, _) => k.len(),
        };
        if tokens.len() > self.max_len || layers.len() != n_layer {
            return Err(mismatch());
        }
        self.tokens.clear();
        let filled = match &mut self.store {
            Store::F32(k, v) => fill_layers(k, v, layers, n, dims, |rows| match rows {
                HostRows::F32(r) => Some(r.as_slice()),
                HostRows::F16(_) => None,
            }),
            Store::F16(k, v) => fill_layers(k, v, layers, n, dims, |rows| match rows {
                HostRows::F16(r) => Some(r.as_slice()),
                HostRows::F32(_) => None,
            }),
        };
        if !filled {
            return Err(mismatch());
        }
        self.tokens = tokens.to_vec();
        Ok(())
    }

    /// Marks `tokens` (whose rows every layer has `put`) as cached.
    pub fn commit(&mut self, tokens: &[u32]) {
        self.tokens.extend_from_slice(tokens);
    }

    /// Drops rows written by `put` but never committed (a forward pass that failed midway).
    pub fn rollback(&mut self) {
        let len = self.tokens.len();
        self.truncate(len);
    }
}

/// Shapes of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    /// New query positions.
    pub t: usize,
    /// Position of the first new query (= number of earlier cached positions).
    pub pos: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub scale: f32,
}

/// One head group's keys and values: rows of `stride` elements, the group at offset `off`.
#[derive(Clone, Copy)]
pub struct GroupRows<'a> {
    k: &'a [f32],
    v: &'a [f32],
    stride: usize,
    off: usize,
}

/// Per compute thread: scores, partial sums, and an F16 cache's keys and values of one group
/// widened to F32 (with the call, group and query they are for, to reuse them).
#[derive(Default)]
struct HeadScratch {
    scores: Vec<f32>,
    acc: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    widened: Option<(usize, usize, usize)>,
}

/// Rows `0..n` of `src` (stride `stride`), elements `off..off + hd` each, as F32 rows of `hd`.
fn widen(src: &[f16], n: usize, stride: usize, off: usize, hd: usize, dst: &mut Vec<f32>) {
    dst.resize(n * hd, 0.0);
    for (j, row) in dst.chunks_exact_mut(hd).enumerate() {
        src[j * stride + off..][..hd].convert_to_f32_slice(row);
    }
}

/// Where a layer's cached keys (or values) lie: row `j` of KV head `g` starts at element
/// `g * group_stride + j * row_stride`, and its `head_dim` elements follow one another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvLayout {
    pub row_stride: usize,
    pub group_stride: usize,
}

impl KvLayout {
    /// The native cache's: one row of `n_head_kv * head_dim` per position.
    pub fn position_major(n_head_kv: usize, head_dim: usize) -> Self {
        Self {
            row_stride: n_head_kv * head_dim,
            group_stride: head_dim,
        }
    }

    /// The Candle backend's (n_head_kv, max_len, head_dim) tensors: each KV head's positions
    /// one after another.
    pub fn head_major(max_len: usize, head_dim: usize) -> Self {
        Self {
            row_stride: head_dim,
            group_stride: max_len * head_dim,
        }
    }

    /// Elements a cache of `len` positions must hold.
    fn min_len(&self, len: usize, n_head_kv: usize, head_dim: usize) -> usize {
        match len {
            0 => 0,
            _ => (n_head_kv - 1) * self.group_stride + (len - 1) * self.row_stride + head_dim,
        }
    }
}

/// `out (t, n_head*head_dim) = softmax(q k^T * scale, causal) v` for queries at positions
/// `pos..pos+t` against cached keys/values `0..pos+t` (`kv`: (pos+t, n_head_kv*head_dim) each).
pub fn attention(q: &[f32], kv: KvLayer, s: AttnShape, out: &mut [f32]) {
    let layout = KvLayout::position_major(s.n_head_kv, s.head_dim);
    attention_in(q, kv, layout, s, out)
}

/// [`attention`] over a cache laid out as `layout` says (the same arithmetic in the same order,
/// whatever the layout).
pub fn attention_in(q: &[f32], kv: KvLayer, layout: KvLayout, s: AttnShape, out: &mut [f32]) {
    let AttnShape {
        t,
        pos,
        n_head,
        n_head_kv,
        head_dim: hd,
        ..
    } = s;
    let KvLayout {
        row_stride,
        group_stride,
    } = layout;
    let need = layout.min_len(pos + t, n_head_kv, hd);
    assert_eq!(q.len(), t * n_head * hd, "attention: query rows");
    assert!(
        match kv {
            KvLayer::F32(k, v) => k.len() >= need && v.len() >= need,
            KvLayer::F16(k, v) => k.len() >= need && v.len() >= need,
        },
        "attention: the cache holds fewer than {} positions",
        pos + t
    );
    assert_eq!(out.len(), t * n_head * hd, "attention: output rows");
    let out_ptr = out.as_mut_ptr() as usize;
    // Tells this call's widened rows from an earlier call's (same buffers, other contents).
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);

    // AVX-512 reads either cache in place, halves converted as they are loaded: the same numbers
    // as widened rows, without writing them (at 1,900 positions a 3B decode step took ~86 ms
    // with widening, ~64 ms then: doc/benchmarks.md).
    #[cfg(target_arch = "x86_64")]
    let in_place = ops::simd_level() >= 2 && hd.is_multiple_of(64);

    thread_local! {
        static SCRATCH: std::cell::RefCell<HeadScratch> = std::cell::RefCell::default();
    }
    // One work item per (query position, head): each writes its own head_dim slice of `out`.
    pool().execute_chunked(t * n_head, |items| {
        SCRATCH.with(|scratch| {
            let scratch = &mut *scratch.borrow_mut();
            for item in items {
                let (i, h) = (item / n_head, item % n_head);
                // SAFETY: item (i, h) owns out[(i*n_head + h)*hd ..][..hd]; items are disjoint.
                let o = unsafe {
                    std::slice::from_raw_parts_mut(
                        (out_ptr as *mut f32).add((i * n_head + h) * hd),
                        hd,
                    )
                };
                let HeadScratch {
                    scores,
                    acc,
                    k: kf,
                    v: vf,
                    widened,
                } = scratch;
                let g = h / (n_head / n_head_kv);
                #[cfg(target_arch = "x86_64")]
                if in_place {
                    let (k, v, half) = match kv {
                        KvLayer::F32(k, v) => (k.as_ptr().cast(), v.as_ptr().cast(), false),
                        KvLayer::F16(k, v) => (k.as_ptr().cast(), v.as_ptr().cast(), true),
                    };
                    let args = (row_stride, g * group_stride, s, (i, h));
                    // SAFETY: AVX-512 F/VL/DQ (simd_level 2); hd is a multiple of 64; the cache
                    // holds positions 0..pos + t of every group (asserted above).
                    unsafe {
                        match half {
                            true => simd::head::<true>(q, k, v, args, scores, acc, o),
                            false => simd::head::<false>(q, k, v, args, scores, acc, o),
                        }
                    };
                    continue;
                }
                match kv {
                    KvLayer::F32(k, v) => {
                        let rows = GroupRows {
                            k,
                            v,
                            stride: row_stride,
                            off: g * group_stride,
                        };
                        head(q, rows, s, (i, h), scores, acc, o)
                    }
                    KvLayer::F16(k, v) => {
                        // The query heads of one group read the same keys and values: widen
                        // them once for consecutive items.
                        if *widened != Some((call, g, i)) {
                            let n_keys = pos + i + 1;
                            widen(k, n_keys, row_stride, g * group_stride, hd, kf);
                            widen(v, n_keys, row_stride, g * group_stride, hd, vf);
                            *widened = Some((call, g, i));
                        }
                        let rows = GroupRows {
                            k: kf,
                            v: vf,
                            stride: hd,
                            off: 0,
                        };
                        head(q, rows, s, (i, h), scores, acc, o)
                    }
                }
            }
        })
    });
}

ops::with_fma!(
    /// Query position `i`, head `h`: scores against every visible key, softmax, weighted values.
    head,
    fn(
        q: &[f32],
        rows: GroupRows,
        s: AttnShape,
        ih: (usize, usize),
        scores: &mut Vec<f32>,
        acc: &mut Vec<f32>,
        o: &mut [f32]
    ) {
        let (i, h) = ih;
        let GroupRows { k, v, stride: kv_dim, off } = rows;
        let hd = s.head_dim;
        let n_keys = s.pos + i + 1;
        let qh = &q[(i * s.n_head + h) * hd..][..hd];
        // llama.cpp's KV view is padded to a multiple of 16 (or more) with masked
        // positions; padding the same way keeps its block-wise softmax sums.
        // A plain loop, not an iterator adapter: closures passed to generic std code are not
        // compiled with this function's target features (`mul_add` would become a libm call).
        scores.clear();
        scores.resize(n_keys.div_ceil(16) * 16, f32::NEG_INFINITY);
        for j in 0..n_keys {
            scores[j] = ops::dot_f32(qh, &k[j * kv_dim + off..][..hd]) * s.scale;
        }
        ops::softmax_in_place(scores);
        weighted_sum(&scores[..n_keys], v, kv_dim, off, acc, o);
    }
);

/// `o[d] = sum_j p[j] * v[j][off + d]` as llama.cpp's tinyBLAS computes `kqv`: 16 FMA lanes over
/// the positions, reduced as a tree.
#[inline(always)]
fn weighted_sum(
    p: &[f32],
    v: &[f32],
    kv_dim: usize,
    off: usize,
    acc: &mut Vec<f32>,
    o: &mut [f32],
) {
    let hd = o.len();
    acc.clear();
    acc.resize(16 * hd, 0.0);
    for (j, &pj) in p.iter().enumerate() {
        let lane = &mut acc[(j % 16) * hd..][..hd];
        for (a, &x) in lane.iter_mut().zip(&v[j * kv_dim + off..][..hd]) {
            *a = x.mul_add(pj, *a);
        }
    }
    // tree_sum16 of the 16 lanes, for every d at once: lanes i and i + 8, then i and i + 4, ...
    for width in [8, 4, 2] {
        let (lo, hi) = acc.split_at_mut(width * hd);
        for (a, b) in lo.iter_mut().zip(&hi[..width * hd]) {
            *a += b;
        }
    }
    for (d, od) in o.iter_mut().enumerate() {
        *od = acc[d] + acc[hd + d];
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    /// Sixteen elements from element `e` of `p` as F32: halves converted exactly (`HALF`), or
    /// floats.
    #[inline(always)]
    unsafe fn load16<const HALF: bool>(p: *const u8, e: usize) -> __m512 {
        unsafe {
            if HALF {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.add(2 * e) as *const __m256i))
            } else {
                _mm512_loadu_ps((p as *const f32).add(e))
            }
        }
    }

    /// `super::head` on AVX-512, the keys and values read as `HALF` says: halves converted as
    /// they are loaded (an F16 cache: the same numbers as widened rows, so every product, sum
    /// and rounding is the one the F32 path does on them), or floats.
    ///
    /// # Safety
    /// AVX-512 F/VL/DQ; `s.head_dim` a multiple of 64; `k` and `v` hold rows `0..s.pos + i + 1`
    /// of `stride` elements, the head group's `head_dim` at `off`.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,fma")]
    pub unsafe fn head<const HALF: bool>(
        q: &[f32],
        k: *const u8,
        v: *const u8,
        (stride, off, s, (i, h)): (usize, usize, super::AttnShape, (usize, usize)),
        scores: &mut Vec<f32>,
        acc: &mut Vec<f32>,
        o: &mut [f32],
    ) {
        let hd = s.head_dim;
        assert_eq!(o.len(), hd, "head: output");
        let n_keys = s.pos + i + 1;
        let qh = &q[(i * s.n_head + h) * hd..][..hd];
        // Padded with masked positions to a multiple of 16, as `super::head` does.
        scores.clear();
        scores.resize(n_keys.div_ceil(16) * 16, f32::NEG_INFINITY);
        unsafe { self::scores::<HALF>(qh, k, stride, off, s.scale, &mut scores[..n_keys]) };
        super::ops::softmax_in_place(scores);
        unsafe { weighted_sum::<HALF>(&scores[..n_keys], v, stride, off, acc, o) };
    }

    /// `super::weighted_sum` with the values read as `HALF` says: per position j, lane j % 16
    /// gets `fma(v_j, p_j, lane)`, then the same tree of lane sums.
    ///
    /// # Safety
    /// AVX-512 F; `o.len()` a multiple of 16; `v` holds rows `0..p.len()`.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,fma")]
    unsafe fn weighted_sum<const HALF: bool>(
        p: &[f32],
        v: *const u8,
        kv_dim: usize,
        off: usize,
        acc: &mut Vec<f32>,
        o: &mut [f32],
    ) {
        let hd = o.len();
        acc.clear();
        acc.resize(16 * hd, 0.0);
        let a = acc.as_mut_ptr();
        for (j, &pj) in p.iter().enumerate() {
            let lane = unsafe { a.add((j % 16) * hd) };
            let pj = _mm512_set1_ps(pj);
            for d in (0..hd).step_by(16) {
                unsafe {
                    let x = load16::<HALF>(v, j * kv_dim + off + d);
                    let l = lane.add(d);
                    _mm512_storeu_ps(l, _mm512_fmadd_ps(x, pj, _mm512_loadu_ps(l)));
                }
            }
        }
        for width in [8, 4, 2] {
            for e in (0..width * hd).step_by(16) {
                unsafe {
                    let (lo, hi) = (a.add(e), a.add(width * hd + e));
                    _mm512_storeu_ps(lo, _mm512_add_ps(_mm512_loadu_ps(lo), _mm512_loadu_ps(hi)));
                }
            }
        }
        for d in (0..hd).step_by(16) {
            unsafe {
                let sum = _mm512_add_ps(_mm512_loadu_ps(a.add(d)), _mm512_loadu_ps(a.add(hd + d)));
                _mm512_storeu_ps(o.as_mut_ptr().add(d), sum);
            }
        }
    }

    /// `out[j] = dot(q, k_j) * scale` for keys j (rows of `k` at `off`, stride `kv_dim`), each dot
    /// exactly as `ops::dot_f32` (ggml's `ggml_vec_dot_f32`): four 16-lane FMA accumulators over
    /// steps of 64, added as (0+2)+(1+3), then `_mm512_reduce_add_ps`. Sixteen keys share one
    /// horizontal reduction, done as a transpose: every add is the one the scalar code does.
    ///
    /// The keys are read as `HALF` says (halves converted exactly, or floats).
    ///
    /// # Safety
    /// AVX-512 F/VL/DQ; `q.len()` a multiple of 64; `k` holds rows `0..out.len()` of its element
    /// type.
    #[target_feature(enable = "avx512f,avx512vl,avx512dq,fma")]
    pub unsafe fn scores<const HALF: bool>(
        q: &[f32],
        k: *const u8,
        kv_dim: usize,
        off: usize,
        scale: f32,
        out: &mut [f32],
    ) {
        let hd = q.len();
        // Lane 4L + e of the reduced vector holds key 4e + L (an involution).
        let perm = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        for (g, out) in out.chunks_mut(16).enumerate() {
            let mut v = [_mm512_setzero_ps(); 16];
            for (jj, v) in v.iter_mut().enumerate().take(out.len()) {
                let kj = (16 * g + jj) * kv_dim + off;
                let mut a = [_mm512_setzero_ps(); 4];
                for c in (0..hd).step_by(64) {
                    for (j, a) in a.iter_mut().enumerate() {
                        let (x, y) = unsafe {
                            (
                                _mm512_loadu_ps(q.as_ptr().add(c + 16 * j)),
                                load16::<HALF>(k, kj + c + 16 * j),
                            )
                        };
                        *a = _mm512_fmadd_ps(x, y, *a);
                    }
                }
                *v = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
            }
            // reduce_add per key: lanes i and i + 8, then i and i + 4, i and i + 2, 0 and 1.
            let t: [__m512; 8] = std::array::from_fn(|p| {
                let (a, b) = (v[2 * p], v[2 * p + 1]);
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
                )
            });
            let u: [__m512; 4] = std::array::from_fn(|m| {
                let (a, b) = (t[2 * m], t[2 * m + 1]);
                _mm512_add_ps(
                    _mm512_shuffle_f32x4::<0b10_00_10_00>(a, b),
                    _mm512_shuffle_f32x4::<0b11_01_11_01>(a, b),
                )
            });
            let w: [__m512; 2] = std::array::from_fn(|n| {
                let (a, b) = (u[2 * n], u[2 * n + 1]);
                _mm512_add_ps(
                    _mm512_shuffle_ps::<0b01_00_01_00>(a, b),
                    _mm512_shuffle_ps::<0b11_10_11_10>(a, b),
                )
            });
            let r = _mm512_add_ps(
                _mm512_shuffle_ps::<0b10_00_10_00>(w[0], w[1]),
                _mm512_shuffle_ps::<0b11_01_11_01>(w[0], w[1]),
            );
            let r = _mm512_mul_ps(_mm512_permutexvar_ps(perm, r), _mm512_set1_ps(scale));
            let mut lanes = [0f32; 16];
            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), r) };
            out.copy_from_slice(&lanes[..out.len()]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention over an F16 cache (read directly by the AVX-512 code, widened elsewhere) is bit
    /// for bit attention over an F32 cache holding the same halves: decode and prefill rows,
    /// grouped heads, key counts on and off multiples of 16, both cache layouts.
    #[test]
    fn an_f16_cache_computes_exactly_what_its_halves_widened_compute() {
        for &(t, pos, n_head, n_head_kv, hd) in &[
            (1, 0, 4, 1, 64),
            (1, 40, 8, 2, 128),
            (1, 47, 16, 4, 64),
            (5, 11, 6, 3, 128),
            (3, 7, 4, 2, 16),
        ] {
            let s = shape(t, pos, n_head, n_head_kv, hd);
            let q = pseudo(t * n_head * hd, 4);
            let len = pos + t;
            for layout in [
                KvLayout::position_major(n_head_kv, hd),
                KvLayout::head_major(len + 3, hd),
            ] {
                let n = layout.min_len(len, n_head_kv, hd);
                let half = |seed| {
                    pseudo(n, seed)
                        .iter()
                        .map(|&x| f16::from_f32(4.0 * x))
                        .collect::<Vec<_>>()
                };
                let (k16, v16) = (half(5), half(6));
                let wide = |x: &[f16]| x.iter().map(|h| h.to_f32()).collect::<Vec<_>>();
                let (k, v) = (wide(&k16), wide(&v16));
                let mut want = vec![f32::NAN; q.len()];
                attention_in(&q, KvLayer::F32(&k, &v), layout, s, &mut want);
                let mut got = vec![f32::NAN; q.len()];
                attention_in(&q, KvLayer::F16(&k16, &v16), layout, s, &mut got);
                let bits = |o: &[f32]| o.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{s:?} {layout:?}");
            }
        }
    }

    /// Straightforward attention with repeated K/V heads, as a reference.
    fn naive(q: &[f32], k: &[f32], v: &[f32], s: AttnShape) -> Vec<f32> {
        let (hd, kv_dim) = (s.head_dim, s.n_head_kv * s.head_dim);
        let mut out = vec![0f32; s.t * s.n_head * hd];
        for i in 0..s.t {
            for h in 0..s.n_head {
                let g = h * s.n_head_kv / s.n_head;
                let qh = &q[(i * s.n_head + h) * hd..][..hd];
                let n = s.pos + i + 1;
                let logits: Vec<f64> = (0..n)
                    .map(|j| {
                        let kj = &k[j * kv_dim + g * hd..][..hd];
                        qh.iter().zip(kj).map(|(a, b)| (a * b) as f64).sum::<f64>() * s.scale as f64
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                for (j, l) in logits.iter().enumerate() {
                    let w = (l - m).exp() / z;
                    for d in 0..hd {
                        out[(i * s.n_head + h) * hd + d] +=
                            (w * v[j * kv_dim + g * hd + d] as f64) as f32;
                    }
                }
            }
        }
        out
    }

    fn pseudo(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x as f32 / u32::MAX as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// One attention call's shape, scaled as the model scales it.
    fn shape(t: usize, pos: usize, n_head: usize, n_head_kv: usize, hd: usize) -> AttnShape {
        AttnShape {
            t,
            pos,
            n_head,
            n_head_kv,
            head_dim: hd,
            scale: 1.0 / (hd as f32).sqrt(),
        }
    }

    #[test]
    fn grouped_causal_attention_matches_naive() {
        for &(t, pos, n_head, n_head_kv, hd) in &[
            (1, 0, 4, 1, 8),
            (5, 0, 4, 2, 12),
            (3, 7, 6, 3, 16),
            (1, 20, 9, 3, 64),
        ] {
            let s = shape(t, pos, n_head, n_head_kv, hd);
            let q = pseudo(t * n_head * hd, 1);
            let k = pseudo((pos + t) * n_head_kv * hd, 2);
            let v = pseudo((pos + t) * n_head_kv * hd, 3);
            let mut out = vec![f32::NAN; q.len()];
            attention(&q, KvLayer::F32(&k, &v), s, &mut out);
            let want = naive(&q, &k, &v, s);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "{s:?}: {a} vs {b}");
            }
            // An F16 cache: the same attention over keys and values rounded to halves.
            let half = |x: &[f32]| x.iter().map(|&x| f16::from_f32(x)).collect::<Vec<_>>();
            let round = |x: &[f32]| {
                x.iter()
                    .map(|&x| f16::from_f32(x).to_f32())
                    .collect::<Vec<_>>()
            };
            let (k16, v16) = (half(&k), half(&v));
            attention(&q, KvLayer::F16(&k16, &v16), s, &mut out);
            let want = naive(&q, &round(&k), &round(&v), s);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() < 1e-5, "F16 {s:?}: {a} vs {b}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn simd_scores_equal_the_scalar_dot() {
        if ops::simd_level() < 2 {
            return;
        }
        for hd in [64, 128] {
            let (n, kv_dim, off) = (37, 3 * hd, hd);
            let q = pseudo(hd, 4);
            let k = pseudo(n * kv_dim, 5);
            let mut fast = vec![0f32; n];
            // SAFETY: checked simd_level above; hd is a multiple of 64.
            unsafe { simd::scores::<false>(&q, k.as_ptr().cast(), kv_dim, off, 0.125, &mut fast) };
            for (j, f) in fast.iter().enumerate() {
                let want = ops::dot_f32(&q, &k[j * kv_dim + off..][..hd]) * 0.125;
                assert_eq!(f.to_bits(), want.to_bits(), "hd {hd} key {j}");
            }
        }
    }

    /// Element `d` of KV head `g`'s keys (values when `values`) at position `j`, as attention
    /// finds it through the layer's layout.
    fn cached(c: &KvCache, il: usize, values: bool, (g, j, d): (usize, usize, usize)) -> f32 {
        let (kv, layout) = c.layer(il);
        let e = g * layout.group_stride + j * layout.row_stride + d;
        match kv {
            KvLayer::F32(k, v) => [k, v][values as usize][e],
            KvLayer::F16(k, v) => [k, v][values as usize][e].to_f32(),
        }
    }

    /// One position's keys or values: element d of KV head g holds `code(x, g, d)`.
    fn row(x: usize, n_head_kv: usize, hd: usize) -> Vec<f32> {
        (0..n_head_kv * hd)
            .map(|e| code(x, e / hd, e % hd))
            .collect()
    }

    /// A number for (x, g, d) with g < 4, d < 4 that halves hold exactly (below 2048).
    fn code(x: usize, g: usize, d: usize) -> f32 {
        ((x % 128) * 16 + 4 * g + d) as f32
    }

    #[test]
    fn cache_rollback_forgets_uncommitted_rows() {
        for kv_type in [KvType::F32, KvType::F16] {
            let mut c = KvCache::new(2, 2, 2, 16, kv_type);
            let rows = |xs: &[usize]| xs.iter().flat_map(|&x| row(x, 2, 2)).collect::<Vec<_>>();
            for il in 0..2 {
                c.put(il, &rows(&[1, 2]), &rows(&[3, 4]));
            }
            c.commit(&[10, 11]);
            c.put(0, &rows(&[5]), &rows(&[6]));
            c.rollback();
            assert_eq!(c.len(), 2);
            c.put(0, &rows(&[7]), &rows(&[8]));
            // Position 2 holds the new rows, 0 and 1 the committed ones, in each KV head.
            assert_eq!(cached(&c, 0, false, (1, 2, 1)), code(7, 1, 1));
            assert_eq!(cached(&c, 0, true, (1, 2, 0)), code(8, 1, 0));
            assert_eq!(cached(&c, 0, false, (1, 1, 0)), code(2, 1, 0));
            assert_eq!(cached(&c, 0, true, (0, 0, 1)), code(3, 0, 1));
            c.truncate(1);
            assert_eq!(c.tokens(), &[10]);
            let saved = c.save(5);
            let lens = |(k, v): &(HostRows, HostRows)| match (k, v) {
                (HostRows::F32(k), HostRows::F32(v)) => (k.len(), v.len()),
                (HostRows::F16(k), HostRows::F16(v)) => (k.len(), v.len()),
                _ => panic!("a saved layer of two types"),
            };
            assert_eq!(lens(&saved[1]), (4, 4), "one position of 2 heads of 2");
            // Grown for 256 positions but capped at 16: 2 heads of 2, keys and values, 2 layers.
            assert_eq!(c.size_in_bytes(), 2 * 2 * 16 * 4 * kv_type.bytes());
        }
    }

    /// Growing (past its first 256 positions and again), saving, restoring and truncating keep
    /// every head's rows where attention reads them.
    #[test]
    fn a_growing_cache_keeps_each_kv_head_s_rows() {
        let (n_head_kv, hd, n) = (3, 4, 700);
        for kv_type in [KvType::F32, KvType::F16] {
            let mut c = KvCache::new(1, n_head_kv, hd, 1000, kv_type);
            // One position per step, as a decode, then 7 at once, as a prefill.
            for x in 0..n - 7 {
                c.put(0, &row(x, n_head_kv, hd), &row(x + 1, n_head_kv, hd));
                c.commit(&[x as u32]);
            }
            let (k7, v7): (Vec<f32>, Vec<f32>) = (
                (n - 7..n).flat_map(|x| row(x, n_head_kv, hd)).collect(),
                (n - 7..n).flat_map(|x| row(x + 1, n_head_kv, hd)).collect(),
            );
            c.put(0, &k7, &v7);
            c.commit(&(n as u32 - 7..n as u32).collect::<Vec<_>>());
            let check = |c: &KvCache, len: usize| {
                for (g, j, d) in (0..n_head_kv)
                    .flat_map(|g| (0..len).flat_map(move |j| (0..hd).map(move |d| (g, j, d))))
                {
                    let (key, value) = (code(j, g, d), code(j + 1, g, d));
                    assert_eq!(cached(c, 0, false, (g, j, d)), key, "key {g} {j} {d}");
                    assert_eq!(cached(c, 0, true, (g, j, d)), value, "value {g} {j} {d}");
                }
            };
            check(&c, n);
            let mut restored = KvCache::new(1, n_head_kv, hd, 1000, kv_type);
            restored.restore(c.tokens(), &c.save(n)).unwrap();
            check(&restored, n);
            assert_eq!(restored.tokens(), c.tokens());
            restored.truncate(300);
            restored.put(0, &row(50, n_head_kv, hd), &row(51, n_head_kv, hd));
            restored.commit(&[9]);
            check(&restored, 300);
            assert_eq!(cached(&restored, 0, false, (2, 300, 3)), code(50, 2, 3));
            assert_eq!(cached(&restored, 0, true, (1, 300, 0)), code(51, 1, 0));
        }
    }

    #[test]
    fn an_f16_cache_stores_halves_rounded_to_nearest() {
        let mut c = KvCache::new(1, 1, 2, 4, KvType::F16);
        // 1 + 2^-11 is halfway between two halves: ties go to the even one (1.0).
        c.put(0, &[1.0 + 1.0 / 2048.0, 65504.0], &[-0.1, 1e-8]);
        let (KvLayer::F16(k, v), _) = c.layer(0) else {
            panic!("an F16 cache")
        };
        assert_eq!([k[0].to_f32(), k[1].to_f32()], [1.0, 65504.0]);
        assert_eq!(v[0], f16::from_f32(-0.1));
        assert_eq!(v[1].to_f32(), 0.0);
        assert_eq!("F16".parse::<KvType>(), Ok(KvType::F16));
        assert_eq!("f32".parse::<KvType>(), Ok(KvType::F32));
        assert!("q8_0"
            .parse::<KvType>()
            .unwrap_err()
            .contains("unknown KV cache type"));
    }
}
