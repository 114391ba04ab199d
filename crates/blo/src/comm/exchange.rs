//! The bytes a rank sends for its block of a meta-batch, and the exchange
//! that gives every rank all B results in task order.
//!
//! A rank's message: a tag (`0` results, `1` panicked + its message); for
//! results, their count, then per task a tag (`0` estimate, `1` error +
//! message); an estimate is its outer loss (bit pattern), its tensors (rank,
//! dims, values as IEEE bits in `F`'s width, little-endian) and its
//! [`Stats`] as JSON (serde_json with exact float round trips, checked by the
//! sender: a value JSON cannot carry, such as a NaN, turns the task into an
//! error on every rank rather than a different number on some).

use std::ops::Range;

use tape::{Float, Tensor};

use super::{block, Communicator};
use crate::error::BloError;
use crate::estimators::{Estimate, Stats};
use crate::io::{float_from_bits, float_to_bits};

/// What a rank computed for its block: the per-task results, or the text of
/// the panic that stopped it.
pub(crate) type Payload<F> = Result<Vec<Result<Estimate<F>, BloError>>, String>;

/// Sends this rank's `local` results for its block of step `k` (B = `b`
/// tasks) and returns the B results of all ranks in task order: this rank's
/// own as computed (errors keep their type), other ranks' decoded, their
/// errors as [`BloError::RankFailed`] naming the rank, step and task. A rank
/// that panicked makes this an error naming it (on the panicking rank too:
/// the caller resumes its panic).
///
/// # Errors
/// [`BloError::RankFailed`]: a rank panicked, failed or was lost, or sent a
/// message that does not decode.
pub(crate) fn exchange<F: Float>(
    comm: &dyn Communicator,
    k: u64,
    b: usize,
    mut local: Payload<F>,
) -> Result<Vec<Result<Estimate<F>, BloError>>, BloError> {
    let (me, size) = (comm.rank(), comm.size());
    let mine = block(b, size, me);
    let bytes = encode(&mut local, &mine);
    let all = comm
        .all_gather(&bytes)
        .map_err(|e| BloError::from_comm(e, k, me))?;
    let failed = |rank: usize, reason: String| BloError::RankFailed {
        rank,
        step: k,
        reason,
    };
    let mut out = Vec::with_capacity(b);
    let mut local = Some(local);
    for (rank, msg) in all.iter().enumerate() {
        let range = block(b, size, rank);
        if rank == me {
            match local.take().expect("own block once") {
                Ok(results) => out.extend(results),
                Err(p) => return Err(failed(me, format!("panicked: {p}"))),
            }
            continue;
        }
        let mut r = Reader { bytes: msg, at: 0 };
        let bad = |what: &str| failed(rank, format!("sent an undecodable block: {what}"));
        match r.u8().ok_or_else(|| bad("no tag"))? {
            0 => {}
            1 => {
                let text = r.text().ok_or_else(|| bad("panic text"))?;
                return Err(failed(rank, format!("panicked: {text}")));
            }
            t => return Err(bad(&format!("tag {t}"))),
        }
        let n = r.u64().ok_or_else(|| bad("count"))? as usize;
        if n != range.len() {
            return Err(bad(&format!(
                "{n} results for its block {range:?} of {} tasks",
                range.len()
            )));
        }
        for i in range {
            match r.u8().ok_or_else(|| bad("result tag"))? {
                0 => out.push(Ok(
                    decode_estimate(&mut r).ok_or_else(|| bad(&format!("task {i}")))?
                )),
                1 => {
                    let text = r.text().ok_or_else(|| bad("error text"))?;
                    out.push(Err(failed(rank, format!("task {i}: {text}"))));
                }
                t => return Err(bad(&format!("result tag {t}"))),
            }
        }
        if r.at != msg.len() {
            return Err(bad("trailing bytes"));
        }
    }
    Ok(out)
}

/// This rank's message. A task whose stats would not arrive bit-identical is
/// turned into an error here, in `local` too, so all ranks see the same.
fn encode<F: Float>(local: &mut Payload<F>, range: &Range<usize>) -> Vec<u8> {
    let mut w = Vec::new();
    match local {
        Err(p) => {
            w.push(1);
            put_text(&mut w, p);
        }
        Ok(results) => {
            assert_eq!(
                results.len(),
                range.len(),
                "exchange: {} results for the block {range:?}",
                results.len()
            );
            w.push(0);
            w.extend((results.len() as u64).to_le_bytes());
            for (r, i) in results.iter_mut().zip(range.clone()) {
                let stats = match r {
                    Ok(est) => match stats_json(&est.stats) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            *r = Err(BloError::invalid(
                                "stats",
                                format!("task {i}"),
                                &format!("cannot be sent between ranks exactly: {e}"),
                            ));
                            None
                        }
                    },
                    Err(_) => None,
                };
                match (r, stats) {
                    (Ok(est), Some(stats)) => {
                        w.push(0);
                        w.extend(float_to_bits(est.outer_loss).to_le_bytes());
                        w.extend((est.grad.len() as u64).to_le_bytes());
                        for t in &est.grad {
                            w.extend((t.dims().len() as u64).to_le_bytes());
                            for &d in t.dims() {
                                w.extend((d as u64).to_le_bytes());
                            }
                            for &x in t.data() {
                                let bits = float_to_bits(x);
                                if F::NAME == "f32" {
                                    w.extend((bits as u32).to_le_bytes());
                                } else {
                                    w.extend(bits.to_le_bytes());
                                }
                            }
                        }
                        put_text(&mut w, &stats);
                    }
                    (Err(e), _) => {
                        w.push(1);
                        put_text(&mut w, &e.to_string());
                    }
                    (Ok(_), None) => unreachable!("an estimate whose stats failed became an error"),
                }
            }
        }
    }
    w
}

/// `stats` as JSON, after checking that it parses back equal.
fn stats_json(stats: &Stats) -> Result<String, String> {
    let text = serde_json::to_string(stats).map_err(|e| e.to_string())?;
    let back: Stats = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if &back != stats {
        return Err(format!("{stats:?} reads back as {back:?}"));
    }
    Ok(text)
}

fn put_text(w: &mut Vec<u8>, s: &str) {
    w.extend((s.len() as u64).to_le_bytes());
    w.extend(s.as_bytes());
}

fn decode_estimate<F: Float>(r: &mut Reader<'_>) -> Option<Estimate<F>> {
    let outer_loss = float_from_bits::<F>(r.u64()?);
    let n = r.u64()? as usize;
    let mut grad = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let nd = r.u64()? as usize;
        let dims = (0..nd)
            .map(|_| r.u64().map(|d| d as usize))
            .collect::<Option<Vec<usize>>>()?;
        let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        let width = if F::NAME == "f32" { 4 } else { 8 };
        let raw = r.take(numel.checked_mul(width)?)?;
        let data = raw
            .chunks_exact(width)
            .map(|c| {
                let bits = if width == 4 {
                    u64::from(u32::from_le_bytes(c.try_into().expect("4 bytes")))
                } else {
                    u64::from_le_bytes(c.try_into().expect("8 bytes"))
                };
                float_from_bits::<F>(bits)
            })
            .collect();
        grad.push(Tensor::new(&dims[..], data));
    }
    let stats: Stats = serde_json::from_str(&r.text()?).ok()?;
    Some(Estimate {
        grad,
        outer_loss,
        stats,
    })
}

/// Reads a message front to back; `None` when it runs short.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn text(&mut self) -> Option<String> {
        let n = self.u64()? as usize;
        self.take(n)
            .map(|b| String::from_utf8_lossy(b).into_owned())
    }
}
