//! A parallel, prefetching, deterministic loader. Worker `w` of `W` builds batches
//! `w, w + W, …` (load, augment, collate) into its own bounded queue of `prefetch` batches; the
//! consumer takes them round-robin, so batches arrive in order and their content does not depend
//! on the number of workers. Sample `i` of the run's step `t` is augmented with
//! `rng::stream(seed ^ i, Augmentation, t)`.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use mpf_model::rng::{Stream, stream};

use crate::augment::Augment;
use crate::batch::Batch;
use crate::{DataError, Dataset};

/// One batch to build: the step it is for and its sample indices.
pub type Plan = Vec<(u64, Vec<usize>)>;

/// The training order for steps `start .. start + steps`: each epoch a seeded shuffle of `indices`
/// (the images kept for training), cut into batches of `batch_size` (a short last batch of an
/// epoch is dropped, as detectron2's infinite sampler never yields one). Empty without images.
pub fn plan(indices: &[usize], batch_size: usize, seed: u64, start: u64, steps: u64) -> Plan {
    use rand::seq::SliceRandom;
    if indices.is_empty() || batch_size == 0 {
        return Vec::new();
    }
    let per_epoch = (indices.len() / batch_size.max(1)).max(1) as u64;
    (start..start + steps)
        .map(|step| {
            let epoch = step / per_epoch;
            let mut order = indices.to_vec();
            order.shuffle(&mut stream(seed, Stream::DataOrder, epoch));
            let k = (step % per_epoch) as usize * batch_size;
            let batch: Vec<usize> = (0..batch_size).map(|j| order[(k + j) % order.len().max(1)]).collect();
            (step, batch)
        })
        .collect()
}

/// Batches of a plan, built by worker threads.
pub struct Loader {
    receivers: Vec<Receiver<Result<Batch, DataError>>>,
    handles: Vec<JoinHandle<()>>,
    next: usize,
    total: usize,
}

impl Loader {
    /// Starts `workers` threads over `plan`.
    pub fn new(
        data: Arc<dyn Dataset>,
        plan: Plan,
        augment: Augment,
        size_divisibility: usize,
        seed: u64,
        workers: usize,
        prefetch: usize,
    ) -> Self {
        let workers = workers.max(1);
        let total = plan.len();
        let plan = Arc::new(plan);
        let augment = Arc::new(augment);
        let mut receivers = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, rx) = sync_channel(prefetch.max(1));
            let (data, plan, augment) = (data.clone(), plan.clone(), augment.clone());
            handles.push(std::thread::spawn(move || {
                for (step, indices) in plan.iter().skip(w).step_by(workers) {
                    let batch = indices
                        .iter()
                        .map(|&i| {
                            let s = data.get(i)?;
                            Ok(augment.apply(s, &mut stream(seed ^ i as u64, Stream::Augmentation, *step)))
                        })
                        .collect::<Result<Vec<_>, DataError>>()
                        .and_then(|samples| Batch::collate(samples, size_divisibility));
                    if tx.send(batch).is_err() {
                        return; // the consumer is gone
                    }
                }
            }));
            receivers.push(rx);
        }
        Self { receivers, handles, next: 0, total }
    }
}

impl Iterator for Loader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.total {
            return None;
        }
        let rx = &self.receivers[self.next % self.receivers.len()];
        self.next += 1;
        Some(rx.recv().unwrap_or_else(|_| {
            Err(DataError::Invalid {
                path: "loader".into(),
                item: "worker".into(),
                message: "a data worker stopped".into(),
            })
        }))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.receivers.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::Lsj;
    use crate::synth::SynthDataset;

    #[test]
    fn batches_do_not_depend_on_the_worker_count() {
        let data: Arc<dyn Dataset> = Arc::new(SynthDataset::new(1, 0, 10, 48));
        let aug = Augment::Lsj(Lsj { size: [48, 48], min_scale: 0.5, max_scale: 1.5, flip: true });
        let p = plan(&(0..10).collect::<Vec<_>>(), 3, 7, 0, 5);
        let run = |workers| {
            Loader::new(data.clone(), p.clone(), aug.clone(), 32, 7, workers, 2)
                .map(|b| {
                    let b = b.unwrap();
                    (b.items.clone(), b.images.iter().map(|i| i.pixels.clone()).collect::<Vec<_>>(), b.objects.clone())
                })
                .collect::<Vec<_>>()
        };
        let one = run(1);
        assert_eq!(one.len(), 5);
        assert_eq!(one, run(3));
    }

    #[test]
    fn plan_covers_each_epoch_once() {
        let idx: Vec<usize> = (0..9).collect();
        let p = plan(&idx, 3, 0, 0, 6);
        let mut first: Vec<usize> = p[..3].iter().flat_map(|b| b.1.clone()).collect();
        first.sort();
        assert_eq!(first, idx, "epoch 0 sees every image once");
        assert_ne!(p[0].1, p[3].1, "a new shuffle each epoch");
        assert_eq!(plan(&idx, 3, 0, 4, 2), p[4..].to_vec(), "resuming at step 4 gives the same batches");
        assert!(plan(&[], 3, 0, 0, 5).is_empty(), "no image, no batch (and no panic)");
    }

    #[test]
    fn errors_arrive_in_order_naming_the_item() {
        struct Broken;
        impl Dataset for Broken {
            fn len(&self) -> usize {
                4
            }
            fn classes(&self) -> &[crate::ClassInfo] {
                &[]
            }
            fn get(&self, index: usize) -> Result<crate::Sample, DataError> {
                Err(DataError::Read { path: format!("{index}.png").into(), message: "missing".into() })
            }
            fn num_objects(&self, _: usize) -> Option<usize> {
                None
            }
            fn summary(&self) -> &crate::Summary {
                Box::leak(Box::default())
            }
        }
        let mut l = Loader::new(Arc::new(Broken), vec![(0, vec![2])], Augment::None, 32, 0, 2, 1);
        let e = l.next().unwrap().unwrap_err().to_string();
        assert!(e.contains("2.png"), "{e}");
        assert!(l.next().is_none());
    }
}
