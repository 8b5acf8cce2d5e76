//! Data-parallel training on Burn's collective operations (`burn-collective`).
//!
//! One replica per device, each in its own thread, with the model on its device (several
//! machines are refused with Burn 0.21, see [`MULTI_NODE_BLOCKED`]). Per optimiser step every
//! replica:
//!
//! 1. takes its shard of each global batch (`data.batch_size` images split evenly: replica `r` of
//!    `N` takes images `r·b/N .. (r+1)·b/N`), draws its random points and noise from per-image
//!    streams keyed by the image's place in the *global* batch, and runs forward and backward;
//! 2. averages the loss normalisers over all replicas (the number of target masks, as
//!    Mask2Former's criterion does with `all_reduce(num_masks) / world_size`, and the class terms'
//!    weight sums), so that the mean of the replicas' gradients is one device's gradient of the
//!    whole batch;
//! 3. all-reduces (mean) its gradients, in buckets of whole parameters taken in module order;
//! 4. clips and steps its AdamW groups on identical gradients, so the replicas stay identical.
//!
//! Replica 0 alone writes the run folder (log, checkpoints, evaluations). MP-Former's extra
//! queries are laid out per replica from its own images: the group size (the largest object count)
//! and, with `group_rule = "dynamic"`, the number of groups are that replica's, as in the
//! reference's distributed training, so a piloted run equals a one-device run of the same total
//! batch only when every replica's largest object count is the batch's.

use std::sync::Arc;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;
use burn_collective::{PeerId, ReduceOperation};
use mpf_criterion::ReplicaMean;

/// Why a multi-node run is refused: with Burn 0.21 it would hang.
///
/// Burn 0.21's global collective (`burn-collective` 0.21.0, `src/global/node/sync.rs`) ends every
/// operation between nodes with `SyncService::sync`, which waits until its list of synced peers
/// equals the node list and then clears a *copy* of that list, never the list itself; from the
/// second operation on the list never matches again and every node waits forever. Two
/// `mpf-train train --nodes 2` processes on one machine showed it: the first all-reduce (the
/// initial weights) completed, both then waited in the second. The `--nodes`, `--node-rank`,
/// `--coordinator` and `--node-address` flags are parsed and checked ([`Nodes`]); joining the
/// nodes (`CollectiveConfig::with_num_nodes` and the addresses, and node 0 serving
/// `burn_collective::start_global_orchestrator`) is left for a Burn that completes the second
/// operation.
pub const MULTI_NODE_BLOCKED: &str = "multi-node training (--nodes 2 or more) is not available with Burn 0.21: its global \
     collective waits forever from the second operation between nodes on (burn-collective 0.21.0, \
     src/global/node/sync.rs: SyncService::sync clears a copy of its list of synced peers, not the \
     list), so the run would hang after its first all-reduce. Train on one machine with several \
     devices instead: --devices cuda×N";

/// Gradients are all-reduced in buckets of about this many values (16 MiB of `f32`), each a run
/// of whole parameters in module order: few collective calls, bounded extra memory.
pub const BUCKET_VALUES: usize = 1 << 22;

/// The nodes of a multi-node run as the flags give them: processes on several machines, each with
/// its own devices, to be joined through Burn's global collective (a coordinator on node 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nodes {
    /// Number of nodes (processes).
    pub count: u32,
    /// This node's rank, `0..count`; node 0 hosts the coordinator and writes the run folder.
    pub rank: u32,
    /// The coordinator's address, `ws://HOST:PORT`, where node 0 listens (on all interfaces).
    pub coordinator: String,
    /// This node's address as the others reach it, `ws://HOST:PORT`; its port is where this
    /// node serves tensors to the others.
    pub address: String,
}

impl Nodes {
    /// Checks the ranks and addresses, naming the flag at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.count < 2 {
            anyhow::bail!("--nodes must be at least 2 for a multi-node run, got {}", self.count);
        }
        if self.rank >= self.count {
            anyhow::bail!("--node-rank {} is not below --nodes {}", self.rank, self.count);
        }
        port_of(&self.coordinator, "--coordinator")?;
        port_of(&self.address, "--node-address")?;
        Ok(())
    }
}

/// The port of a `ws://HOST:PORT` address.
fn port_of(address: &str, flag: &str) -> anyhow::Result<u16> {
    let rest = address.strip_prefix("ws://").ok_or_else(|| {
        anyhow::anyhow!("{flag} `{address}` must look like ws://HOST:PORT (e.g. ws://10.0.0.1:29500)")
    })?;
    let hostport = rest.split('/').next().unwrap_or_default();
    hostport
        .rsplit_once(':')
        .and_then(|(host, port)| (!host.is_empty()).then(|| port.parse::<u16>().ok()).flatten())
        .filter(|&p| p != 0)
        .ok_or_else(|| anyhow::anyhow!("{flag} `{address}` has no valid HOST:PORT (e.g. ws://10.0.0.1:29500)"))
}

/// A replica's place in a data-parallel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replica {
    /// Rank, `0..world`.
    pub rank: usize,
    /// Number of replicas over all nodes.
    pub world: usize,
}

impl Replica {
    /// The only replica of a one-device run.
    pub const SINGLE: Replica = Replica { rank: 0, world: 1 };

    /// Replica 0 writes the run folder, evaluates and reports.
    pub fn is_main(&self) -> bool {
        self.rank == 0
    }

    /// Its collective peer id.
    pub fn peer(&self) -> PeerId {
        PeerId(self.rank as u32)
    }

    /// The images of a global batch of `batch` this replica takes: `rank·b/N .. (rank+1)·b/N`.
    pub fn shard(&self, batch: usize) -> std::ops::Range<usize> {
        let per = batch / self.world;
        self.rank * per..(self.rank + 1) * per
    }

    /// The element-wise mean of `values` over the replicas (the values themselves for one).
    pub fn mean<B: Backend>(&self, values: &[f64], device: &B::Device) -> anyhow::Result<Vec<f64>> {
        if self.world == 1 || values.is_empty() {
            return Ok(values.to_vec());
        }
        let local: Vec<f32> = values.iter().map(|&v| v as f32).collect();
        let t = Tensor::<B, 1>::from_data(TensorData::new(local, [values.len()]), device);
        let reduced = self.all_reduce(t, ReduceOperation::Mean)?;
        Ok(reduced.into_data().convert::<f64>().to_vec().unwrap_or_default())
    }

    fn all_reduce<B: Backend>(&self, t: Tensor<B, 1>, op: ReduceOperation) -> anyhow::Result<Tensor<B, 1>> {
        let out = burn_collective::all_reduce::<B>(self.peer(), t.into_primitive().tensor(), op)
            .map_err(|e| anyhow::anyhow!("all-reduce failed on replica {}: {e:?}", self.rank))?;
        Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
    }

    /// `model` with replica 0's weights, every float parameter sent in module order (as PyTorch's
    /// `DistributedDataParallel` does when it wraps a model), so the replicas start identical
    /// whatever their own initialisation drew. Parameter ids stay this replica's own.
    ///
    /// Sent as an all-reduce sum to which the other replicas add zeros (exact in floating point):
    /// Burn 0.21's collective has no broadcast across nodes.
    pub fn broadcast_weights<B: AutodiffBackend, M: AutodiffModule<B>>(&self, model: M) -> anyhow::Result<M> {
        if self.world == 1 {
            return Ok(model);
        }
        struct Take<B: AutodiffBackend> {
            main: bool,
            flat: Vec<Tensor<Inner<B>, 1>>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Take<B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let v = param.val().inner();
                let n = v.shape().num_elements();
                let v = if self.main { v } else { v.zeros_like() };
                self.flat.push(v.reshape([n]));
            }
        }
        let mut take = Take::<B> { main: self.is_main(), flat: Vec::new() };
        model.visit(&mut take);
        let received = self.all_reduce_flat(take.flat, ReduceOperation::Sum)?;
        struct Put<B: AutodiffBackend> {
            values: std::vec::IntoIter<Tensor<Inner<B>, 1>>,
        }
        impl<B: AutodiffBackend> ModuleMapper<B> for Put<B> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
                let Some(v) = self.values.next() else { return param };
                param.map(|t| {
                    let (require_grad, shape) = (t.is_require_grad(), t.shape());
                    Tensor::from_inner(v.reshape(shape)).set_require_grad(require_grad)
                })
            }
        }
        Ok(model.map(&mut Put::<B> { values: received.into_iter() }))
    }

    /// `op` over the replicas of each of `tensors` (1-d), packed into buckets of whole tensors of
    /// about [`BUCKET_VALUES`] values, one all-reduce per bucket, and cut back apart.
    fn all_reduce_flat<B: Backend>(
        &self,
        tensors: Vec<Tensor<B, 1>>,
        op: ReduceOperation,
    ) -> anyhow::Result<Vec<Tensor<B, 1>>> {
        let sizes: Vec<usize> = tensors.iter().map(|t| t.dims()[0]).collect();
        let mut buckets: Vec<Vec<Tensor<B, 1>>> = Vec::new();
        let mut filled = 0;
        for t in tensors {
            let n = t.dims()[0];
            if buckets.is_empty() || (filled > 0 && filled + n > BUCKET_VALUES) {
                buckets.push(Vec::new());
                filled = 0;
            }
            filled += n;
            buckets.last_mut().expect("a bucket").push(t);
        }
        let mut out = Vec::with_capacity(sizes.len());
        let mut sizes = sizes.into_iter();
        for b in buckets {
            let count = b.len();
            let reduced = self.all_reduce(Tensor::cat(b, 0), op)?;
            let mut offset = 0;
            for n in sizes.by_ref().take(count) {
                out.push(reduced.clone().narrow(0, offset, n));
                offset += n;
            }
        }
        Ok(out)
    }

    /// The mean of every replica's gradients of `model`'s trainable parameters.
    ///
    /// Parameters are taken in module order (the same on every replica, whatever their random
    /// ids), flattened and packed into buckets of about [`BUCKET_VALUES`] values, one
    /// all-reduce per bucket. A parameter without a gradient on a replica contributes zeros; one
    /// without a gradient on every replica stays without one, as on one device.
    pub fn all_reduce_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        mut grads: GradientsParams,
    ) -> anyhow::Result<GradientsParams> {
        if self.world == 1 {
            return Ok(grads);
        }
        struct Take<'a, B: AutodiffBackend> {
            grads: &'a mut GradientsParams,
            flat: Vec<Tensor<Inner<B>, 1>>,
            present: Vec<f32>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Take<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let value = param.val();
                if !value.is_require_grad() {
                    return;
                }
                let numel = value.shape().num_elements();
                let (g, here) = match self.grads.remove::<Inner<B>, D>(param.id) {
                    Some(g) => (g.reshape([numel]), 1.0),
                    None => (Tensor::zeros([numel], &value.device()), 0.0),
                };
                self.flat.push(g);
                self.present.push(here);
            }
        }
        let mut take = Take::<B> { grads: &mut grads, flat: Vec::new(), present: Vec::new() };
        model.visit(&mut take);
        let Take { mut flat, present, .. } = take;
        if flat.is_empty() {
            return Ok(grads);
        }
        // The presence flags travel as one more tensor: their mean is positive exactly when some
        // replica had the gradient.
        let n_flags = present.len();
        flat.push(Tensor::from_data(TensorData::new(present, [n_flags]), &flat[0].device()));
        let mut reduced = self.all_reduce_flat(flat, ReduceOperation::Mean)?;
        let flags: Vec<f32> =
            reduced.pop().expect("the flags").into_data().convert::<f32>().to_vec().unwrap_or_default();
        struct Put<'a, B: AutodiffBackend> {
            grads: &'a mut GradientsParams,
            pieces: std::vec::IntoIter<Tensor<Inner<B>, 1>>,
            flags: std::vec::IntoIter<f32>,
        }
        impl<B: AutodiffBackend> ModuleVisitor<B> for Put<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                let value = param.val();
                if !value.is_require_grad() {
                    return;
                }
                let (Some(piece), Some(flag)) = (self.pieces.next(), self.flags.next()) else { return };
                if flag > 0.0 {
                    self.grads.register::<Inner<B>, D>(param.id, piece.reshape(value.shape()));
                }
            }
        }
        model.visit(&mut Put::<B> { grads: &mut grads, pieces: reduced.into_iter(), flags: flags.into_iter() });
        Ok(grads)
    }
}

/// The inner (non-autodiff) backend of `B`.
type Inner<B> = <B as AutodiffBackend>::InnerBackend;

/// The criterion's normalisers averaged over the replicas through the collective.
pub struct CollectiveMean<B: Backend> {
    /// This replica.
    pub replica: Replica,
    /// Its device.
    pub device: B::Device,
}

impl<B: Backend> ReplicaMean for CollectiveMean<B> {
    fn mean(&self, local: &[f64]) -> Result<Vec<f64>, String> {
        self.replica.mean::<B>(local, &self.device).map_err(|e| e.to_string())
    }
}

/// Shared by the replicas of one process: the data sets, opened once.
pub type SharedData = (Arc<dyn mpf_data::Dataset>, Arc<dyn mpf_data::Dataset>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_split_the_batch_evenly_in_rank_order() {
        let r = |rank| Replica { rank, world: 4 };
        assert_eq!((r(0).shard(8), r(3).shard(8)), (0..2, 6..8));
        assert_eq!(Replica::SINGLE.shard(5), 0..5);
    }

    #[test]
    fn node_addresses_are_checked() {
        let n = Nodes {
            count: 2,
            rank: 1,
            coordinator: "ws://10.0.0.1:29500".into(),
            address: "ws://10.0.0.2:29501".into(),
        };
        n.validate().unwrap();
        let e = Nodes { rank: 2, ..n.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("--node-rank"), "{e}");
        let e = Nodes { coordinator: "10.0.0.1:29500".into(), ..n.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("--coordinator") && e.contains("ws://"), "{e}");
        let e = Nodes { address: "ws://host".into(), ..n.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("--node-address"), "{e}");
        let e = Nodes { count: 1, rank: 0, ..n }.validate().unwrap_err().to_string();
        assert!(e.contains("--nodes"), "{e}");
    }
}
