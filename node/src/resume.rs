//! Resumable sessions. When a hop of a route fails, the hops that survive keep the session for a
//! while ([`ParkBoard`]): its KV cache, its places, and every output they computed ([`Kept`]).
//! The client opens the repaired route with the same session id and `resume` set, each surviving
//! hop takes its session up again, and the client replays the session's inputs as before: a hop
//! answers the rows it already computed from what it kept ([`plan_rows`]) as long as their inputs
//! are the ones it computed them from, so only the replacement (and any hop whose inputs
//! changed) runs its blocks over the prefix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sunswarm_protocol::SessionId;
use tokio::sync::Notify;

/// A session's outputs on this hop, row by row, with a digest of each row's input.
#[derive(Debug, Default)]
pub struct Kept {
    inputs: Vec<[u8; 32]>,
    /// `[rows, dim]`, row-major.
    outputs: Vec<f32>,
}

impl Kept {
    /// Rows kept: always the positions the session's cache holds.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    pub fn inputs(&self) -> &[[u8; 32]] {
        &self.inputs
    }

    /// The outputs of rows `start..start + rows`.
    pub fn outputs(&self, start: usize, rows: usize, dim: usize) -> &[f32] {
        &self.outputs[start * dim..(start + rows) * dim]
    }

    pub fn truncate(&mut self, rows: usize, dim: usize) {
        self.inputs.truncate(rows);
        self.outputs.truncate(rows * dim);
    }

    /// Appends computed rows: their input digests and outputs.
    pub fn push(&mut self, inputs: &[[u8; 32]], outputs: &[f32]) {
        self.inputs.extend_from_slice(inputs);
        self.outputs.extend_from_slice(outputs);
    }

    /// Bytes one kept row takes for hidden size `dim`.
    pub fn bytes_per_row(dim: usize) -> usize {
        dim * size_of::<f32>() + 32
    }
}

/// blake3 of each row of `data` (`[rows, dim]`), over its values' little-endian bytes.
///
/// Each row's bytes go to the hasher in one piece: fed four bytes at a time, a SmolLM2 row
/// (576 values) took 576 calls and 36 one-block compressions, several microseconds of every
/// hop's serial path per token; whole, blake3 hashes its 1 KiB chunks together.
pub fn row_digests(data: &[f32], dim: usize) -> Vec<[u8; 32]> {
    let mut bytes = Vec::with_capacity(dim * size_of::<f32>());
    data.chunks(dim.max(1))
        .map(|row| {
            bytes.clear();
            bytes.extend(row.iter().flat_map(|v| v.to_le_bytes()));
            *blake3::hash(&bytes).as_bytes()
        })
        .collect()
}

/// What a hop does with a forward, given what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowPlan {
    /// The forward's first rows, answered from the kept outputs.
    pub kept: usize,
    /// Positions to keep before computing the rest (drop everything after), when the hop holds
    /// rows that the forward's computed rows replace.
    pub truncate_to: Option<usize>,
}

/// Plans a forward of `inputs.len()` rows (their digests) starting at `position`, on a hop that
/// kept the rows `held` (their input digests): rows it holds with the same inputs are answered
/// from what it kept; from the first row it does not hold, or holds from another input, it
/// computes. A prompt chunk (not `stepwise`) is computed whole or not at all, because its rows
/// computed apart would round differently from the chunk; the rows of a stepwise forward are
/// each computed as a one-token step, so any tail of them may be. A forward that starts past
/// what the hop holds left a gap (a message was lost): refused.
pub fn plan_rows(
    position: usize,
    inputs: &[[u8; 32]],
    held: &[[u8; 32]],
    stepwise: bool,
) -> Result<RowPlan, String> {
    if position > held.len() {
        return Err(format!(
            "forward starts at position {position} but the cache holds {}",
            held.len()
        ));
    }
    let end = position + inputs.len();
    let same = held[position..end.min(held.len())]
        .iter()
        .zip(inputs)
        .take_while(|(a, b)| a == b)
        .count();
    let mut upto = position + same;
    if upto < end && upto > position && !stepwise {
        upto = position;
    }
    // Rows held past the forward stay: the next forward may be their replay too.
    Ok(RowPlan {
        kept: upto - position,
        truncate_to: (upto < end && upto < held.len()).then_some(upto),
    })
}

/// Sessions of this node that are running now, and those kept after their route broke, until a
/// resume takes them up or their grace runs out. `T` is what a kept session holds.
pub struct ParkBoard<T> {
    sessions: Mutex<HashMap<SessionId, Held<T>>>,
    next_id: AtomicU64,
}

enum Held<T> {
    Running {
        client: Vec<u8>,
        /// Tells the running session to stop and be kept (a resume wants it).
        leave: Arc<Notify>,
    },
    Kept {
        client: Vec<u8>,
        id: u64,
        state: T,
    },
}

impl<T> Default for ParkBoard<T> {
    fn default() -> Self {
        ParkBoard {
            sessions: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        }
    }
}

/// Why a session could not be registered or taken up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParkError {
    #[error("session {0} is already open on this node")]
    AlreadyOpen(SessionId),
    #[error("session {0} was opened for another client")]
    OtherClient(SessionId),
    #[error("session {0} is still running here and did not stop within {1:?}")]
    StillRunning(SessionId, Duration),
}

/// A running session's place on the board; dropping it removes the session (a session that
/// ends for good), [`Running::keep`] keeps its state instead.
pub struct Running<T: Send + 'static> {
    board: Arc<ParkBoard<T>>,
    session: SessionId,
    client: Vec<u8>,
    leave: Arc<Notify>,
    done: bool,
}

impl<T: Send + 'static> Running<T> {
    /// Resolves when a resume of this session asks it to stop.
    pub async fn asked_to_leave(&self) {
        self.leave.notified().await
    }

    /// Keeps `state` for a resume during `grace`, after which it is dropped.
    pub fn keep(mut self, state: T, grace: Duration) {
        self.done = true;
        let id = self.board.next_id.fetch_add(1, Ordering::Relaxed);
        self.board.lock().insert(
            self.session,
            Held::Kept {
                client: std::mem::take(&mut self.client),
                id,
                state,
            },
        );
        let (board, session) = (self.board.clone(), self.session);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            let expired = {
                let mut map = board.lock();
                match map.get(&session) {
                    Some(Held::Kept { id: i, .. }) if *i == id => map.remove(&session),
                    _ => None,
                }
            };
            // Dropped outside the lock: a kept state frees places as it goes.
            drop(expired);
        });
    }
}

impl<T: Send + 'static> Drop for Running<T> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut map = self.board.lock();
        if matches!(map.get(&self.session), Some(Held::Running { leave, .. }) if Arc::ptr_eq(leave, &self.leave))
        {
            map.remove(&self.session);
        }
    }
}

impl<T: Send + 'static> ParkBoard<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Held<T>>> {
        // Every method changes the map in one step, so a panic elsewhere cannot leave it torn.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert_running(self: &Arc<Self>, session: SessionId, client: &[u8]) -> Running<T> {
        let leave = Arc::new(Notify::new());
        self.lock().insert(
            session,
            Held::Running {
                client: client.to_vec(),
                leave: leave.clone(),
            },
        );
        Running {
            board: self.clone(),
            session,
            client: client.to_vec(),
            leave,
            done: false,
        }
    }

    /// Registers a new session; refused if the id is running or kept here.
    pub fn open(
        self: &Arc<Self>,
        session: SessionId,
        client: &[u8],
    ) -> Result<Running<T>, ParkError> {
        if self.lock().contains_key(&session) {
            return Err(ParkError::AlreadyOpen(session));
        }
        Ok(self.insert_running(session, client))
    }

    /// Takes up `session` for `client`: its kept state if it has one here (asking a running one
    /// to stop first, and waiting up to `wait` for it), or nothing if this node does not hold it.
    /// Either way the session is registered as running again.
    pub async fn resume(
        self: &Arc<Self>,
        session: SessionId,
        client: &[u8],
        wait: Duration,
    ) -> Result<(Running<T>, Option<T>), ParkError> {
        let until = Instant::now() + wait;
        loop {
            {
                let mut map = self.lock();
                if let Some(Held::Kept { client: c, .. } | Held::Running { client: c, .. }) =
                    map.get(&session)
                    && c != client
                {
                    return Err(ParkError::OtherClient(session));
                }
                match map.remove(&session) {
                    None => {
                        drop(map);
                        return Ok((self.insert_running(session, client), None));
                    }
                    Some(Held::Kept { state, .. }) => {
                        drop(map);
                        return Ok((self.insert_running(session, client), Some(state)));
                    }
                    // Still running: asked to stop, and left in place until it is kept.
                    Some(Held::Running { client, leave }) => {
                        leave.notify_one();
                        map.insert(session, Held::Running { client, leave });
                    }
                }
            }
            if Instant::now() >= until {
                return Err(ParkError::StillRunning(session, wait));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sessions kept now (not running).
    pub fn kept(&self) -> usize {
        self.lock()
            .values()
            .filter(|h| matches!(h, Held::Kept { .. }))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(v: u8) -> [u8; 32] {
        [v; 32]
    }

    #[test]
    fn rows_held_with_the_same_inputs_are_answered_from_what_was_kept() {
        let held = [d(1), d(2), d(3), d(4)];
        // A whole replay of what the hop holds.
        let p = plan_rows(0, &held, &held, false).unwrap();
        assert_eq!((p.kept, p.truncate_to), (4, None));
        // The prefix it holds, then a new row (the failed step riding on a stepwise replay).
        let p = plan_rows(1, &[d(2), d(3), d(4), d(5)], &held, true).unwrap();
        assert_eq!((p.kept, p.truncate_to), (3, None));
        // A normal step at the end.
        let p = plan_rows(4, &[d(5)], &held, false).unwrap();
        assert_eq!((p.kept, p.truncate_to), (0, None));
        // Nothing held.
        let p = plan_rows(0, &[d(1), d(2)], &[], false).unwrap();
        assert_eq!((p.kept, p.truncate_to), (0, None));
    }

    #[test]
    fn from_the_first_changed_input_the_hop_drops_what_it_holds_and_computes() {
        let held = [d(1), d(2), d(3), d(4)];
        // Stepwise: rows before the change are kept, the rest computed.
        let p = plan_rows(1, &[d(2), d(9), d(4)], &held, true).unwrap();
        assert_eq!((p.kept, p.truncate_to), (1, Some(2)));
        // A prompt chunk is computed whole.
        let p = plan_rows(0, &[d(1), d(2), d(9)], &held, false).unwrap();
        assert_eq!((p.kept, p.truncate_to), (0, Some(0)));
        // A chunk that runs past what is held is computed whole too.
        let p = plan_rows(2, &[d(3), d(4), d(5)], &held, false).unwrap();
        assert_eq!((p.kept, p.truncate_to), (0, Some(2)));
        // A change at the first row.
        let p = plan_rows(0, &[d(7)], &held, true).unwrap();
        assert_eq!((p.kept, p.truncate_to), (0, Some(0)));
        // An earlier row sent again with its input: answered, the later rows stay.
        let p = plan_rows(1, &[d(2)], &held, false).unwrap();
        assert_eq!((p.kept, p.truncate_to), (1, None));
    }

    #[test]
    fn a_gap_is_refused() {
        let e = plan_rows(3, &[d(1)], &[d(1)], false).unwrap_err();
        assert!(e.contains("position 3") && e.contains("holds 1"), "{e}");
    }

    /// Every plan, over small cases: the kept rows are exactly the held prefix with matching
    /// inputs (all or nothing for a prompt chunk), and what is kept plus what is computed is
    /// the forward.
    #[test]
    fn plans_are_consistent_over_all_small_cases() {
        for held_len in 0..5usize {
            let held: Vec<[u8; 32]> = (0..held_len as u8).map(d).collect();
            for position in 0..=held_len {
                for n in 1..5usize {
                    for change in 0..=n {
                        for stepwise in [false, true] {
                            let inputs: Vec<[u8; 32]> = (0..n)
                                .map(|i| {
                                    let v = (position + i) as u8;
                                    if i >= change { d(v + 100) } else { d(v) }
                                })
                                .collect();
                            let p = plan_rows(position, &inputs, &held, stepwise).unwrap();
                            let matching = (0..n)
                                .take_while(|&i| position + i < held_len && i < change)
                                .count();
                            let want = if stepwise || matching == n {
                                matching
                            } else {
                                0
                            };
                            assert_eq!(p.kept, want, "{held_len} {position} {n} {change}");
                            let upto = position + p.kept;
                            let computes = upto < position + n;
                            assert_eq!(
                                p.truncate_to,
                                (computes && upto < held_len).then_some(upto)
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn row_digests_tell_rows_apart() {
        let d = row_digests(&[1.0, 2.0, 1.0, 2.0, 1.0, 2.5], 2);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], d[1]);
        assert_ne!(d[1], d[2]);
        // Over the row's values' little-endian bytes, as one message.
        let bytes: Vec<u8> = [1.0f32, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(d[2], *blake3::hash(&bytes).as_bytes());
        assert_eq!(row_digests(&[], 2), Vec::<[u8; 32]>::new());
    }

    #[tokio::test]
    async fn a_resume_takes_up_a_kept_session_or_stops_a_running_one_first() {
        let board: Arc<ParkBoard<u32>> = Arc::default();
        let sid = SessionId([1; 16]);
        let running = board.open(sid, b"alice").unwrap();
        assert_eq!(
            board.open(sid, b"alice").err(),
            Some(ParkError::AlreadyOpen(sid))
        );
        assert_eq!(
            board.resume(sid, b"mallory", Duration::ZERO).await.err(),
            Some(ParkError::OtherClient(sid))
        );
        // A running session is asked to leave; it keeps its state and the resume takes it.
        let b2 = board.clone();
        let resumer =
            tokio::spawn(async move { b2.resume(sid, b"alice", Duration::from_secs(5)).await });
        tokio::time::timeout(Duration::from_secs(5), running.asked_to_leave())
            .await
            .expect("the running session is asked to leave");
        running.keep(42, Duration::from_secs(60));
        let (again, state) = resumer.await.unwrap().unwrap();
        assert_eq!(state, Some(42));
        assert_eq!(board.kept(), 0);
        // Kept again; a resume of an unknown session starts fresh.
        again.keep(43, Duration::from_secs(60));
        assert_eq!(board.kept(), 1);
        let (fresh, state) = board
            .resume(SessionId([2; 16]), b"bob", Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(state, None);
        drop(fresh);
        // A session that ends for good leaves nothing behind.
        let (r, state) = board.resume(sid, b"alice", Duration::ZERO).await.unwrap();
        assert_eq!(state, Some(43));
        drop(r);
        assert!(board.open(sid, b"alice").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_session_is_dropped_after_its_grace() {
        let board: Arc<ParkBoard<Arc<()>>> = Arc::default();
        let token = Arc::new(());
        let sid = SessionId([3; 16]);
        board
            .open(sid, b"c")
            .unwrap()
            .keep(token.clone(), Duration::from_secs(20));
        assert_eq!(Arc::strong_count(&token), 2);
        tokio::time::sleep(Duration::from_secs(19)).await;
        assert_eq!(board.kept(), 1);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(board.kept(), 0);
        assert_eq!(Arc::strong_count(&token), 1, "its state is freed");
        // And a resume after that starts fresh.
        let (_r, state) = board.resume(sid, b"c", Duration::ZERO).await.unwrap();
        assert!(state.is_none());
    }
}
