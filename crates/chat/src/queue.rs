//! [`FairQueue`]: the answers waiting for the engine worker, served round-robin by who asked (each
//! desktop chat, each API client), so a source with many requests never makes another wait behind
//! all of them. Each waiting answer is told how many answers are ahead of it (the running one
//! included) whenever that changes, as [`JobEvent::Queued`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;

use crate::worker::{GenerationJob, JobEvent};

struct Waiting {
    job: GenerationJob,
    /// The position it was last told.
    told: Option<usize>,
}

#[derive(Default)]
pub(crate) struct FairQueue {
    /// Sources with waiting answers, in the order they are served next.
    turn: VecDeque<String>,
    waiting: HashMap<String, VecDeque<Waiting>>,
    /// An answer is running: it is ahead of every waiting one.
    running: bool,
}

impl FairQueue {
    pub fn push(&mut self, job: GenerationJob) {
        let queue = self.waiting.entry(job.source.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(job.source.clone());
        }
        queue.push_back(Waiting { job, told: None });
        self.tell_positions();
    }

    /// The next answer to run (the oldest of the source whose turn it is); it counts as running
    /// until [`FairQueue::done`].
    pub fn pop(&mut self) -> Option<GenerationJob> {
        let source = self.turn.pop_front()?;
        let queue = self.waiting.get_mut(&source)?;
        let next = queue.pop_front()?;
        if queue.is_empty() {
            self.waiting.remove(&source);
        } else {
            self.turn.push_back(source);
        }
        self.running = true;
        self.tell_positions();
        Some(next.job)
    }

    pub fn done(&mut self) {
        self.running = false;
        self.tell_positions();
    }

    /// Answers waiting or running.
    pub fn len(&self) -> usize {
        self.waiting.values().map(VecDeque::len).sum::<usize>() + usize::from(self.running)
    }

    /// Every waiting answer, in no particular order (the worker is stopping).
    pub fn drain(&mut self) -> Vec<GenerationJob> {
        self.turn.clear();
        self.waiting
            .drain()
            .flat_map(|(_, q)| q.into_iter().map(|w| w.job))
            .collect()
    }

    /// Tells each waiting answer its position where it changed. The order answers run in: the
    /// first of each source in turn order, then the second of each, and so on. Stopped answers
    /// are skipped: they will end at once.
    fn tell_positions(&mut self) {
        let mut ahead = usize::from(self.running);
        let depth = self.waiting.values().map(VecDeque::len).max().unwrap_or(0);
        for round in 0..depth {
            for source in &self.turn {
                let Some(w) = self.waiting.get_mut(source).and_then(|q| q.get_mut(round)) else {
                    continue;
                };
                if w.job.cancelled.load(Ordering::Relaxed) {
                    continue;
                }
                if w.told != Some(ahead) {
                    w.told = Some(ahead);
                    (w.job.sink)(JobEvent::Queued(ahead));
                }
                ahead += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::sampling::Sampling;
    use crate::worker::Prompt;

    type Told = Arc<Mutex<Vec<(String, usize)>>>;

    fn job(source: &str, name: &str, told: &Told) -> GenerationJob {
        let (told, name) = (told.clone(), name.to_owned());
        GenerationJob {
            tools: None,
            follow_ups: None,
            prompt: Prompt::Text(name.clone()),
            params: Sampling {
                temperature: None,
                top_p: None,
                top_k: None,
                min_p: None,
                repeat_penalty: None,
                seed: None,
                max_tokens: 1,
                max_thinking_tokens: None,
                stop: Vec::new(),
                speculative: true,
            }
            .validate()
            .unwrap(),
            source: source.into(),
            cancelled: Arc::new(AtomicBool::new(false)),
            sink: Box::new(move |e| {
                if let JobEvent::Queued(n) = e {
                    told.lock().unwrap().push((name.clone(), n));
                }
            }),
        }
    }

    fn name(job: &GenerationJob) -> &str {
        match &job.prompt {
            Prompt::Text(t) => t,
            Prompt::Chat { .. } => unreachable!(),
        }
    }

    #[test]
    fn sources_take_turns_and_each_answer_knows_its_place() {
        let told = Told::default();
        let mut q = FairQueue::default();
        // One client asks three times before another asks once.
        for n in ["a1", "a2", "a3"] {
            q.push(job("a", n, &told));
        }
        q.push(job("b", "b1", &told));
        assert_eq!(q.len(), 4);
        let told_last = |n: &str| {
            told.lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(m, _)| m == n)
                .map(|(_, p)| *p)
        };
        assert_eq!(
            told_last("b1"),
            Some(1),
            "b waits for one of a's, not all three"
        );
        assert_eq!(told_last("a3"), Some(3));
        let first = q.pop().unwrap();
        assert_eq!(name(&first), "a1");
        assert_eq!(told_last("b1"), Some(1), "a1, now running, is still ahead");
        q.done();
        assert_eq!(told_last("b1"), Some(0), "nothing is ahead once a1 is done");
        assert_eq!(told_last("a2"), Some(1));
        let order: Vec<String> = std::iter::from_fn(|| {
            let j = q.pop()?;
            q.done();
            Some(name(&j).to_owned())
        })
        .collect();
        assert_eq!(order, ["b1", "a2", "a3"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_stopped_answer_holds_no_place() {
        let told = Told::default();
        let mut q = FairQueue::default();
        let first = job("a", "a1", &told);
        let stop = first.cancelled.clone();
        q.push(first);
        q.push(job("b", "b1", &told));
        stop.store(true, Ordering::SeqCst);
        q.push(job("c", "c1", &told));
        let c1 = told.lock().unwrap().last().cloned();
        assert_eq!(c1, Some(("c1".into(), 1)), "only b1 is ahead of c1");
    }
}
