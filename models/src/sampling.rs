//! Token sampling: repetition penalty → top-k → top-p → min-p → temperature → a seeded draw,
//! the order llama.cpp's default chain uses. A temperature of 0 is greedy (argmax).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;

/// Sampling settings (the defaults match llama.cpp's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: usize,
    /// 1 = off.
    pub top_p: f32,
    /// 0 = off.
    pub min_p: f32,
    /// 1 = off.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplerConfig {
    /// Always the most likely token.
    pub fn greedy() -> Self {
        SamplerConfig {
            temperature: 0.0,
            ..Default::default()
        }
    }
}

/// A seeded sampler with the recent-token history its penalty needs.
#[derive(Debug)]
pub struct Sampler {
    cfg: SamplerConfig,
    rng: StdRng,
    recent: VecDeque<i32>,
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> i32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as i32
}

impl Sampler {
    pub fn new(cfg: SamplerConfig) -> Sampler {
        Sampler {
            cfg,
            rng: StdRng::seed_from_u64(cfg.seed),
            recent: VecDeque::new(),
        }
    }

    /// Records a token (prompt or generated) for the repetition penalty.
    pub fn accept(&mut self, token: i32) {
        if self.cfg.repeat_last_n == 0 {
            return;
        }
        if self.recent.len() == self.cfg.repeat_last_n {
            self.recent.pop_front();
        }
        self.recent.push_back(token);
    }

    /// Picks the next token from one row of logits.
    pub fn sample(&mut self, logits: &[f32]) -> i32 {
        let mut l = logits.to_vec();
        if self.cfg.repeat_penalty != 1.0 {
            let mut seen = std::collections::HashSet::new();
            for &t in &self.recent {
                if seen.insert(t)
                    && let Some(x) = l.get_mut(t as usize)
                {
                    *x = if *x > 0.0 {
                        *x / self.cfg.repeat_penalty
                    } else {
                        *x * self.cfg.repeat_penalty
                    };
                }
            }
        }
        if self.cfg.temperature <= 0.0 {
            return argmax(&l);
        }
        // Candidates sorted by logit, largest first.
        let mut c: Vec<(i32, f32)> = l.iter().enumerate().map(|(i, &x)| (i as i32, x)).collect();
        c.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if self.cfg.top_k > 0 {
            c.truncate(self.cfg.top_k.max(1));
        }
        let probs = |c: &[(i32, f32)]| -> Vec<f32> {
            let m = c[0].1;
            let e: Vec<f32> = c.iter().map(|x| (x.1 - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.iter().map(|x| x / s).collect()
        };
        if self.cfg.top_p < 1.0 {
            let p = probs(&c);
            let mut acc = 0.0;
            let mut keep = c.len();
            for (i, q) in p.iter().enumerate() {
                acc += q;
                if acc >= self.cfg.top_p {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep.max(1));
        }
        if self.cfg.min_p > 0.0 {
            let p = probs(&c);
            let floor = p[0] * self.cfg.min_p;
            let keep = p.iter().take_while(|&&q| q >= floor).count();
            c.truncate(keep.max(1));
        }
        let scaled: Vec<(i32, f32)> = c
            .iter()
            .map(|&(i, x)| (i, x / self.cfg.temperature))
            .collect();
        let p = probs(&scaled);
        let mut u: f32 = self.rng.random_range(0.0..1.0);
        for (k, q) in p.iter().enumerate() {
            if u < *q {
                return scaled[k].0;
            }
            u -= q;
        }
        scaled[scaled.len() - 1].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn logits() -> Vec<f32> {
        (0..50)
            .map(|i| ((i * 37 % 11) as f32) * 0.3 - (i as f32) * 0.01)
            .collect()
    }

    #[test]
    fn greedy_and_top_k_one_pick_the_argmax() {
        let l = logits();
        assert_eq!(Sampler::new(SamplerConfig::greedy()).sample(&l), argmax(&l));
        let cfg = SamplerConfig {
            temperature: 1.5,
            top_k: 1,
            ..Default::default()
        };
        assert_eq!(Sampler::new(cfg).sample(&l), argmax(&l));
    }

    #[test]
    fn a_seed_reproduces_the_same_draws() {
        let l = logits();
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            seed: 7,
            ..Default::default()
        };
        let draw = |cfg| {
            let mut s = Sampler::new(cfg);
            (0..32).map(|_| s.sample(&l)).collect::<Vec<_>>()
        };
        assert_eq!(draw(cfg), draw(cfg));
        assert_ne!(draw(cfg), draw(SamplerConfig { seed: 8, ..cfg }));
        // Sampling at temperature 1 spreads over several tokens.
        let distinct: std::collections::HashSet<i32> = draw(cfg).into_iter().collect();
        assert!(distinct.len() > 3);
    }

    #[test]
    fn min_p_and_top_p_keep_only_likely_tokens() {
        let mut l = vec![-10.0f32; 20];
        l[3] = 5.0;
        l[7] = 4.9;
        let cfg = SamplerConfig {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.5,
            seed: 1,
            ..Default::default()
        };
        let mut s = Sampler::new(cfg);
        for _ in 0..50 {
            assert!(matches!(s.sample(&l), 3 | 7));
        }
        let cfg = SamplerConfig {
            top_p: 0.3,
            min_p: 0.0,
            ..cfg
        };
        let mut s = Sampler::new(cfg);
        for _ in 0..20 {
            assert_eq!(s.sample(&l), 3);
        }
    }

    #[test]
    fn repeat_penalty_lowers_recent_tokens() {
        let mut l = vec![0.0f32; 5];
        l[2] = 2.0;
        l[4] = 1.9;
        let mut s = Sampler::new(SamplerConfig {
            temperature: 0.0,
            repeat_penalty: 1.5,
            ..Default::default()
        });
        assert_eq!(s.sample(&l), 2);
        s.accept(2);
        assert_eq!(s.sample(&l), 4);
    }
}
