//! MP query layout: how many groups, which slot holds which object, the
//! (possibly label-noised) class each slot's content is taken from, and the targets the criterion
//! assigns directly.

use mpf_model::rng::ImageRng;

use crate::noise::label_noise;

/// How many MP groups a batch gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupRule {
    /// A fixed number of groups (the released recipe uses 1).
    Fixed(usize),
    /// The paper's dynamic rule `n_g = ⌊n_q / n_o⌋` for a budget of `n_q` MP queries and `n_o` the
    /// most objects in any image of the batch.
    Dynamic {
        /// MP query budget `n_q`.
        queries: usize,
    },
}

/// One MP slot of one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// Index of the GT object the slot stands for (`None` for padding).
    pub object: Option<usize>,
    /// Class whose embedding is the slot's content (label noise applied); `None` for padding,
    /// whose content is zero.
    pub input_label: Option<usize>,
    /// Classification target: the object's true class, or `K` (no object) for padding.
    pub target_label: usize,
}

/// The MP part of one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpLayout {
    /// Groups `n_g`.
    pub num_groups: usize,
    /// Slots per group: the most objects in any image (`max_num`).
    pub group_size: usize,
    /// Per image, `P = n_g · group_size` slots; group `g` holds slots `g·group_size ..`, object `j`
    /// of the image sits at `g·group_size + j`.
    pub slots: Vec<Vec<Slot>>,
}

impl MpLayout {
    /// Number of MP slots `P`.
    pub fn num_slots(&self) -> usize {
        self.num_groups * self.group_size
    }
}

/// Lays out the MP part for a batch whose images have the given GT class labels. Returns `None`
/// when the MP part is skipped: no object in any image, or a group count of 0.
/// `label_noise_ratio` draws from image `b`'s generator of `rng` (the `label_noise` streams) once
/// per (group, object).
pub fn build_layout(
    labels: &[Vec<usize>],
    num_classes: usize,
    rule: GroupRule,
    label_noise_ratio: f64,
    rng: &mut impl ImageRng,
) -> Option<MpLayout> {
    let group_size = labels.iter().map(Vec::len).max().unwrap_or(0);
    if group_size == 0 {
        return None;
    }
    let num_groups = match rule {
        GroupRule::Fixed(n) => n,
        GroupRule::Dynamic { queries } => queries / group_size,
    };
    if num_groups == 0 {
        return None;
    }
    let padding = Slot { object: None, input_label: None, target_label: num_classes };
    let mut slots = vec![vec![padding; num_groups * group_size]; labels.len()];
    for g in 0..num_groups {
        for (b, image) in labels.iter().enumerate() {
            for (j, &label) in image.iter().enumerate() {
                let input = label_noise(label, num_classes, label_noise_ratio, rng.image(b));
                slots[b][g * group_size + j] = Slot { object: Some(j), input_label: Some(input), target_label: label };
            }
        }
    }
    Some(MpLayout { num_groups, group_size, slots })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn fixed_groups_slot_layout() {
        let mut rng = StdRng::seed_from_u64(0);
        let l = build_layout(&[vec![3, 1], vec![4]], 5, GroupRule::Fixed(2), 0.0, &mut rng).unwrap();
        assert_eq!((l.num_groups, l.group_size, l.num_slots()), (2, 2, 4));
        let objects: Vec<Vec<Option<usize>>> = l.slots.iter().map(|s| s.iter().map(|x| x.object).collect()).collect();
        assert_eq!(objects, vec![vec![Some(0), Some(1), Some(0), Some(1)], vec![Some(0), None, Some(0), None]]);
        let targets: Vec<usize> = l.slots[1].iter().map(|s| s.target_label).collect();
        assert_eq!(targets, vec![4, 5, 4, 5], "padding slots target no-object (K = 5)");
        assert_eq!(l.slots[0][1].input_label, Some(1), "no label noise at ratio 0");
        assert_eq!(l.slots[1][1].input_label, None);
    }

    #[test]
    fn dynamic_rule_and_skips() {
        let mut rng = StdRng::seed_from_u64(0);
        let l = build_layout(&[vec![0; 3], vec![1]], 2, GroupRule::Dynamic { queries: 10 }, 0.0, &mut rng).unwrap();
        assert_eq!((l.num_groups, l.group_size), (3, 3), "⌊10/3⌋ = 3 groups");
        assert!(build_layout(&[vec![], vec![]], 2, GroupRule::Fixed(1), 0.2, &mut rng).is_none(), "empty batch");
        assert!(
            build_layout(&[vec![], vec![]], 2, GroupRule::Dynamic { queries: 100 }, 0.2, &mut rng).is_none(),
            "no division by zero"
        );
        assert!(build_layout(&[vec![0; 4]], 2, GroupRule::Dynamic { queries: 3 }, 0.0, &mut rng).is_none(), "n_g = 0");
        assert!(build_layout(&[vec![0]], 2, GroupRule::Fixed(0), 0.0, &mut rng).is_none());
    }

    #[test]
    fn label_noise_changes_inputs_never_targets() {
        let mut rng = StdRng::seed_from_u64(5);
        let labels = vec![vec![2; 50]; 4];
        let l = build_layout(&labels, 10, GroupRule::Fixed(3), 1.0, &mut rng).unwrap();
        let slots: Vec<&Slot> = l.slots.iter().flatten().collect();
        assert!(slots.iter().all(|s| s.target_label == 2));
        let changed = slots.iter().filter(|s| s.input_label != Some(2)).count() as f64 / slots.len() as f64;
        assert!((changed - 0.9).abs() < 0.05, "uniform redraw over 10 classes keeps 1/10: {changed}");
        // Groups draw independently.
        let g0: Vec<_> = l.slots[0][..50].iter().map(|s| s.input_label).collect();
        let g1: Vec<_> = l.slots[0][50..100].iter().map(|s| s.input_label).collect();
        assert_ne!(g0, g1);
    }
}
