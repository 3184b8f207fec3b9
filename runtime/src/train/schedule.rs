//! Learning-rate schedules, exactly as transformers' `get_scheduler` builds them
//! (`LambdaLR` multipliers evaluated at the optimizer step index).

use std::fmt;

/// The schedules this build implements (`--lr_scheduler_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    Linear,
    Cosine,
    Constant,
    ConstantWithWarmup,
}

impl ScheduleKind {
    /// Parses the argument value; the argument table already refused everything else.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "linear" => Some(Self::Linear),
            "cosine" => Some(Self::Cosine),
            "constant" => Some(Self::Constant),
            "constant_with_warmup" => Some(Self::ConstantWithWarmup),
            _ => None,
        }
    }
}

impl fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Cosine => "cosine",
            Self::Constant => "constant",
            Self::ConstantWithWarmup => "constant_with_warmup",
        })
    }
}

/// A learning-rate schedule over a known number of optimizer steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
}

/// HF's `TrainingArguments.get_warmup_steps`: explicit steps win, else ceil(ratio * total).
pub fn warmup_steps(warmup_steps: u64, warmup_ratio: f64, total_steps: u64) -> u64 {
    if warmup_steps > 0 {
        warmup_steps
    } else {
        (warmup_ratio * total_steps as f64).ceil() as u64
    }
}

impl Schedule {
    /// The multiplier of `base_lr` after `step` optimizer steps (HF's lr_lambda).
    pub fn factor(&self, step: u64) -> f64 {
        let warm = self.warmup_steps;
        let in_warmup = step < warm;
        let warmup_factor = step as f64 / warm.max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::ConstantWithWarmup if in_warmup => warmup_factor,
            ScheduleKind::ConstantWithWarmup => 1.0,
            ScheduleKind::Linear if in_warmup => warmup_factor,
            ScheduleKind::Linear => {
                let rest = self.total_steps.saturating_sub(step) as f64;
                let span = self.total_steps.saturating_sub(warm).max(1) as f64;
                (rest / span).max(0.0)
            }
            ScheduleKind::Cosine if in_warmup => warmup_factor,
            ScheduleKind::Cosine => {
                let span = self.total_steps.saturating_sub(warm).max(1) as f64;
                let progress = (step - warm) as f64 / span;
                // num_cycles = 0.5: half a cosine wave from 1 down to 0.
                (0.5 * (1.0 + (std::f64::consts::PI * 2.0 * 0.5 * progress).cos())).max(0.0)
            }
        }
    }

    /// The learning rate used for the optimizer step with index `step` (0-based).
    pub fn lr(&self, step: u64) -> f64 {
        self.base_lr * self.factor(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind) -> Schedule {
        Schedule {
            kind,
            base_lr: 1e-4,
            warmup_steps: 2,
            total_steps: 10,
        }
    }

    // Reference values from transformers 4.x `get_scheduler(name, opt, 2, 10)`, reading
    // `scheduler.get_last_lr()` before each `step()`.
    #[test]
    fn matches_transformers() {
        let cos: Vec<f64> = (0..10).map(|s| sched(ScheduleKind::Cosine).lr(s)).collect();
        let expected_cos = [
            0.0,
            5e-5,
            1e-4,
            9.619397662556434e-05,
            8.535533905932738e-05,
            6.913417161825449e-05,
            5e-05,
            3.086582838174551e-05,
            1.4644660940672627e-05,
            3.806023374435663e-06,
        ];
        for (a, b) in cos.iter().zip(expected_cos) {
            assert!((a - b).abs() < 1e-15, "{cos:?}");
        }
        let lin: Vec<f64> = (0..10).map(|s| sched(ScheduleKind::Linear).lr(s)).collect();
        let expected_lin = [
            0.0, 5e-5, 1e-4, 8.75e-5, 7.5e-5, 6.25e-5, 5e-5, 3.75e-5, 2.5e-5, 1.25e-5,
        ];
        for (a, b) in lin.iter().zip(expected_lin) {
            assert!((a - b).abs() < 1e-15, "{lin:?}");
        }
        assert_eq!(sched(ScheduleKind::Constant).lr(0), 1e-4);
        assert_eq!(sched(ScheduleKind::ConstantWithWarmup).lr(1), 5e-5);
        assert_eq!(sched(ScheduleKind::ConstantWithWarmup).lr(7), 1e-4);
    }

    #[test]
    fn warmup_steps_follow_hf() {
        assert_eq!(warmup_steps(0, 0.05, 100), 5);
        assert_eq!(warmup_steps(0, 0.05, 101), 6);
        assert_eq!(warmup_steps(3, 0.5, 100), 3);
        assert_eq!(warmup_steps(0, 0.0, 100), 0);
        let no_warmup = Schedule {
            kind: ScheduleKind::Cosine,
            base_lr: 1.0,
            warmup_steps: 0,
            total_steps: 4,
        };
        assert_eq!(no_warmup.lr(0), 1.0);
    }
}
