//! GT masks at decoder-level resolution and the MP self-attention mask.
//! [`BinaryMask`] itself lives in `mpf-model` (the data crate shares it).

pub use mpf_model::mask::BinaryMask;

/// The self-attention mask over `P + Q` queries, `P = num_groups · group_size` MP slots first,
/// row-major `(P+Q) × (P+Q)`, `true` = blocked:
/// matching queries cannot see any MP slot; an MP slot cannot see another group's slots; MP slots
/// see their own group (padding included) and every matching query. No row is fully blocked.
pub fn self_attention_mask(num_groups: usize, group_size: usize, num_queries: usize) -> Vec<bool> {
    let p = num_groups * group_size;
    let t = p + num_queries;
    let mut m = vec![false; t * t];
    for r in 0..t {
        for c in 0..p {
            let blocked = if r >= p { true } else { r / group_size != c / group_size };
            m[r * t + c] = blocked;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(h: usize, w: usize, cells: &[(usize, usize)]) -> BinaryMask {
        let mut data = vec![false; h * w];
        for &(y, x) in cells {
            data[y * w + x] = true;
        }
        BinaryMask { height: h, width: w, data }
    }

    #[test]
    fn downsample_marks_cells_with_any_foreground() {
        let m = mask(4, 4, &[(0, 0), (3, 2)]);
        let d = m.downsample_any(2);
        assert_eq!((d.height, d.width), (2, 2));
        assert_eq!(d.data, vec![true, false, false, true]);
    }

    #[test]
    fn max_pool_equals_area_pool_above_zero_on_padded_sizes() {
        // Pseudo-random masks on 64×96 (multiples of 32), factors 8, 16, 32.
        let mut state = 12345u64;
        for trial in 0..20 {
            let data: Vec<bool> = (0..64 * 96)
                .map(|_| {
                    state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (state >> 33).is_multiple_of(10 + trial)
                })
                .collect();
            let m = BinaryMask::new(64, 96, data, trial as usize).unwrap();
            for f in [8, 16, 32] {
                let any = m.downsample_any(f).data;
                let area: Vec<bool> = m.area_pool(f).iter().map(|&a| a > 1e-8).collect();
                assert_eq!(any, area, "factor {f}");
                assert_eq!(m.downsample_to(64 / f, 96 / f).data, any, "explicit size, factor {f}");
            }
        }
    }

    #[test]
    fn bad_buffer_is_named() {
        let e = BinaryMask::new(2, 2, vec![true; 3], 7).unwrap_err().to_string();
        assert!(e.contains("mask 7"), "{e}");
    }

    #[test]
    fn self_attention_blocks_by_hand() {
        // 2 groups of 2 MP slots, 3 matching queries: T = 7.
        let m = self_attention_mask(2, 2, 3);
        let row = |r: usize| m[r * 7..(r + 1) * 7].iter().map(|&b| b as u8).collect::<Vec<_>>();
        assert_eq!(row(0), vec![0, 0, 1, 1, 0, 0, 0]);
        assert_eq!(row(1), vec![0, 0, 1, 1, 0, 0, 0]);
        assert_eq!(row(2), vec![1, 1, 0, 0, 0, 0, 0]);
        assert_eq!(row(3), vec![1, 1, 0, 0, 0, 0, 0]);
        for r in 4..7 {
            assert_eq!(row(r), vec![1, 1, 1, 1, 0, 0, 0]);
        }
    }

    #[test]
    fn self_attention_one_group_and_no_full_rows() {
        for (g, n, q) in [(1, 3, 2), (5, 1, 4), (3, 4, 10), (1, 1, 1)] {
            let m = self_attention_mask(g, n, q);
            let t = g * n + q;
            for r in 0..t {
                assert!(m[r * t..(r + 1) * t].iter().any(|&b| !b), "row {r} fully blocked for {g},{n},{q}");
                // Matching queries always see each other; MP slots always see matching queries.
                assert!(m[r * t + g * n..(r + 1) * t].iter().all(|&b| !b));
            }
        }
        // Dynamic rule: ⌊7/3⌋ = 2 groups of 3 slots, 1 matching query (T = 7), written out by hand.
        let m = self_attention_mask(7 / 3, 3, 1);
        let rows: Vec<String> = m.chunks(7).map(|r| r.iter().map(|&b| if b { 'x' } else { '.' }).collect()).collect();
        assert_eq!(rows, ["...xxx.", "...xxx.", "...xxx.", "xxx....", "xxx....", "xxx....", "xxxxxx."]);
        // One group: MP slots see each other.
        let m = self_attention_mask(1, 3, 2);
        assert!(m[..3].iter().all(|&b| !b));
    }
}
