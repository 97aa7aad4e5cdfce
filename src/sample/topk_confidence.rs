//! The reference's top-k confidence commit rule (`trainer.py::generate_samples`, used by every
//! evaluation script; reference-semantics §2.2, fixtures/README §3e): after the forward at loop
//! step t of T, the `floor(N·t/T)` lowest-scoring originally-maskable positions stay masked and
//! every other still-masked position commits.

use super::schedule::Phase;

/// One step of the rule on `phase` at loop step `t` (> 0): how many of its positions stay
/// masked, and the positions that commit.
pub fn step_commits(
    phase: &Phase,
    t: usize,
    scores: &[f32],
    masked: &[bool],
) -> (usize, Vec<usize>) {
    let keep = cutoff_len(phase.positions.len(), t, phase.steps);
    let mut maskable = vec![false; masked.len()];
    phase.positions.iter().for_each(|&i| maskable[i] = true);
    (keep, commits(scores, &maskable, masked, keep))
}

/// `cutoff_len`: how many originally-maskable positions stay masked at loop step `t` of `total`.
///
/// Computed as the reference does, `(N * (t/T)).long()` with `N` a tensor: `t/T` is a Python
/// float rounded to f32, the product is f32, and `.long()` truncates. For the fixtures' T = 8 this
/// is the exact floor; for other T it can differ from `N·t/T` by rounding, and we keep that.
pub fn cutoff_len(n: usize, t: usize, total: usize) -> usize {
    let ratio = (t as f64 / total as f64) as f32;
    (n as f32 * ratio) as usize
}

/// Score given to positions outside the ranking (the reference's src positions), so they sort last.
const EXCLUDED: f32 = 1000.0;

/// The positions that commit: still `masked`, and not among the `keep` lowest `scores` of the
/// `maskable` (originally maskable) positions.
///
/// Quirk kept on purpose (`trainer.py:421-432`): already committed positions keep their fresh
/// scores and compete for the `keep` slots, so a step can commit more than the schedule says.
/// The comparison is a strict `<` against the keep-th sorted score with no index tie-break: a
/// position whose score equals the cutoff commits.
pub fn commits(scores: &[f32], maskable: &[bool], masked: &[bool], keep: usize) -> Vec<usize> {
    let ranked: Vec<f32> = scores
        .iter()
        .zip(maskable)
        .map(|(&s, &m)| if m { s } else { EXCLUDED })
        .collect();
    let mut sorted = ranked.clone();
    sorted.sort_by(f32::total_cmp);
    // keep < N ≤ L whenever t < T, so the index exists; a larger keep means nothing commits.
    let Some(&cutoff) = sorted.get(keep) else {
        return vec![];
    };
    (0..scores.len())
        .filter(|&i| {
            // NaN scores (never produced for maskable positions) would count as "not kept".
            let keep = ranked[i] < cutoff;
            masked[i] && !keep
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoff_is_the_floor_for_power_of_two_steps() {
        for n in 0..40 {
            for t in 0..8 {
                assert_eq!(cutoff_len(n, t, 8), n * t / 8);
            }
        }
    }

    #[test]
    fn committed_positions_compete_for_the_keep_slots() {
        // Positions 0 fixed; 1 committed with a low score; 2, 3 masked.
        let scores = [0.0, -5.0, -1.0, -2.0];
        let maskable = [false, true, true, true];
        let masked = [false, false, true, true];
        // keep = 1: the committed position 1 takes the only slot, so both masked ones commit.
        assert_eq!(commits(&scores, &maskable, &masked, 1), vec![2, 3]);
        // keep = 2: positions 1 and 3 have the two lowest scores; only 2 commits.
        assert_eq!(commits(&scores, &maskable, &masked, 2), vec![2]);
        // A tie with the cutoff commits (strict <).
        let tie = [0.0, -1.0, -1.0, -3.0];
        assert_eq!(
            commits(&tie, &maskable, &[false, true, true, true], 1),
            vec![1, 2]
        );
    }
}
