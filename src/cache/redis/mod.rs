//! [`RedisTier`], [`SharedCache`] and [`SharedCached`]: the cache's shared
//! tier, in Redis, for several instances of a service (feature `redis`).
//!
//! See [`SharedCached`] for how the tiers work together.

mod codec;
mod decode_failures;
mod early;
mod error;
mod generations;
mod health;
mod shared;
mod tier;

pub use self::early::{EarlyRefresh, InvalidEarlyRefresh};
pub use self::error::RedisTierError;
pub use self::shared::{SharedCache, SharedCached};
pub use self::tier::RedisTier;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::EarlyRefresh;
    use super::RedisTierError;
    use super::codec::{Schema, decode_within, encode, fnv1a, now_ms};
    use super::early::is_due;
    use super::generations::{Generation, Generations, keep_for};
    use super::health::Health;
    use super::tier::{MAX_PX_MS, escape, lock_token, px};

    fn round_trip<T: Serialize + DeserializeOwned>(value: &T) -> T {
        let bytes = encode(value, now_ms(), 0).unwrap();
        decode_within(&bytes, Duration::from_secs(60))
            .unwrap()
            .unwrap()
            .value
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Stats {
        count: u32,
        names: Vec<String>,
        ratio: Option<f64>,
        kind: Kind,
    }

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Kind {
        Plain,
        Tagged { id: i64 },
    }

    #[test]
    fn the_codec_keeps_the_value_types_dashboards_use() {
        let stats = Stats {
            count: 3,
            names: vec!["a".into(), "b".into()],
            ratio: Some(0.25),
            kind: Kind::Tagged { id: -7 },
        };
        assert_eq!(round_trip(&stats), stats);
        assert_eq!(round_trip(&vec![1_i64, -2, 3]), vec![1, -2, 3]);
        assert_eq!(round_trip(&"text".to_owned()), "text");
        assert_eq!(round_trip(&Kind::Plain), Kind::Plain);
        let json = serde_json::json!({"total": 125000, "rows": [{"id": 1, "paid": true}], "note": null, "rate": 0.5});
        assert_eq!(round_trip(&json), json);
        // A struct is a map from its field names.
        let bytes = encode(&stats, 0, 0).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            ["count", "names", "ratio", "kind", "Tagged", "id"]
                .iter()
                .all(|name| text.contains(name)),
            "{text}"
        );
    }

    /// An older build's `Stats`: the same fields in another order, and a
    /// field it leaves out when empty.
    #[derive(serde::Serialize)]
    struct OldStats {
        kind: Kind,
        #[serde(skip_serializing_if = "Option::is_none")]
        ratio: Option<f64>,
        names: Vec<String>,
        count: u32,
    }

    #[test]
    fn fields_decode_by_name_whatever_their_order_or_absence() {
        let old = OldStats {
            kind: Kind::Plain,
            ratio: None,
            names: vec!["x".into()],
            count: 9,
        };
        let bytes = encode(&old, now_ms(), 0).unwrap();
        let new = decode_within::<Stats>(&bytes, Duration::from_secs(60))
            .unwrap()
            .unwrap()
            .value;
        let expected = Stats {
            count: 9,
            names: vec!["x".into()],
            ratio: None,
            kind: Kind::Plain,
        };
        assert_eq!(new, expected);
    }

    #[test]
    fn the_type_fingerprint_is_stable_fnv1a_of_the_type_name() {
        // The published FNV-1a 64 test vectors: any change here would make
        // every build read none of the values the last one stored.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(Schema::of::<Stats>(0), Schema::of::<Stats>(0));
        assert_ne!(Schema::of::<Stats>(0), Schema::of::<Stats>(1));
        assert_ne!(Schema::of::<Stats>(0), Schema::of::<Kind>(0));
        let fingerprint = fnv1a(std::any::type_name::<u64>().as_bytes());
        assert_eq!(
            Schema::of::<u64>(7).to_string(),
            format!("{fingerprint:016x}:7")
        );
    }

    #[test]
    fn a_value_of_another_shape_is_a_miss_and_an_old_one_too() {
        let bytes = encode(&"text".to_owned(), now_ms(), 0).unwrap();
        assert!(decode_within::<i64>(&bytes, Duration::from_secs(60)).is_err());
        let old = encode(&1_i64, now_ms() - 61_000, 0).unwrap();
        assert!(
            decode_within::<i64>(&old, Duration::from_secs(60))
                .unwrap()
                .is_none()
        );
        let age = decode_within::<i64>(&old, Duration::from_secs(120))
            .unwrap()
            .unwrap()
            .age;
        assert!(age >= Duration::from_secs(61));
    }

    #[test]
    fn key_parts_never_run_together() {
        assert_eq!(escape("total_revenue"), "total_revenue");
        assert_eq!(escape("a:b%c"), "a%3Ab%25c");
        assert_ne!(
            format!("{}:{}", escape("a:b"), escape("c")),
            format!("{}:{}", escape("a"), escape("b:c"))
        );
    }

    #[test]
    fn px_is_never_zero_nor_huge() {
        assert_eq!(px(Duration::ZERO), 1);
        assert_eq!(px(Duration::from_millis(1500)), 1500);
        assert_eq!(px(Duration::MAX), MAX_PX_MS as u64);
    }

    #[test]
    fn lock_tokens_are_unique() {
        assert_ne!(lock_token(), lock_token());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_redis_is_tried_once_per_pause_and_warned_about_once() {
        let health = Health::default();
        let pause = Duration::from_secs(1);
        let error = RedisTierError::timed_out("GET", Duration::from_millis(50));
        assert!(health.admits(pause));
        health.failed("ns", &error, pause);
        assert!(!health.admits(pause));
        tokio::time::advance(pause).await;
        assert!(health.admits(pause), "one probe");
        assert!(!health.admits(pause), "only one");
        health.succeeded("ns");
        assert!(health.admits(pause));
        // A second episode soon after the first: no second WARN.
        health.failed("ns", &error, pause);
        assert!(health.state().warned_at.unwrap().elapsed() >= pause);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_of_duration_max_never_tries_a_failing_redis_again() {
        let health = Health::default();
        let error = RedisTierError::timed_out("GET", Duration::from_millis(50));
        assert!(health.admits(Duration::MAX));
        health.failed("ns", &error, Duration::MAX);
        for _ in 0..3 {
            assert!(!health.admits(Duration::MAX));
            tokio::time::advance(Duration::from_secs(100 * 365 * 24 * 3600)).await;
        }
        // A call that succeeds anyway (an explicit `generation`) ends it.
        health.succeeded("ns");
        assert!(health.admits(Duration::MAX));
    }

    /// How a `v2` build without computation times reads a value: the
    /// codec of commit 977badf, verbatim.
    fn decode_as_a_v2_build_without_computation_times<T: DeserializeOwned>(
        bytes: &[u8],
    ) -> Result<(u64, T), rmp_serde::decode::Error> {
        rmp_serde::from_slice::<(u64, T)>(bytes)
    }

    #[test]
    fn a_value_with_its_computation_time_reads_back_in_this_build_and_an_older_one() {
        let stats = Stats {
            count: 1,
            names: vec![],
            ratio: None,
            kind: Kind::Plain,
        };
        let at = now_ms();
        let bytes = encode(&stats, at, 1_234).unwrap();
        // This build: the value, its time and its computation time.
        let stored = decode_within::<Stats>(&bytes, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!(stored.value, stats);
        assert_eq!(stored.computed_at_ms, at);
        assert_eq!(stored.computed_in, Duration::from_millis(1_234));
        // A build that knows no computation time reads the same value.
        let (old_at, old_value) =
            decode_as_a_v2_build_without_computation_times::<Stats>(&bytes).unwrap();
        assert_eq!((old_at, old_value), (at, stats));
    }

    #[test]
    fn a_value_written_without_a_computation_time_reads_as_computed_in_no_time() {
        // What a build without computation times writes.
        let at = now_ms();
        let old = rmp_serde::to_vec_named(&(at, 7_i64)).unwrap();
        let stored = decode_within::<i64>(&old, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!((stored.value, stored.computed_at_ms), (7, at));
        assert_eq!(stored.computed_in, Duration::ZERO);
        // A trailer some later build might write that is not a number: the
        // value still reads, computed in no time.
        let mut odd = old.clone();
        rmp_serde::encode::write(&mut odd, &"later").unwrap();
        let stored = decode_within::<i64>(&odd, Duration::from_secs(60))
            .unwrap()
            .unwrap();
        assert_eq!((stored.value, stored.computed_in), (7, Duration::ZERO));
        // Never due before expiry, whatever the draw.
        let early = EarlyRefresh::new(1e9).unwrap().seed(3);
        let ttl = Duration::from_secs(60);
        assert!((0..1_000).all(|_| !early.is_due(
            ttl - Duration::from_millis(1),
            stored.computed_in,
            ttl
        )));
    }

    #[test]
    fn the_xfetch_rule_for_fixed_draws() {
        let ttl = Duration::from_secs(60);
        let delta = Duration::from_secs(2);
        let ms = Duration::from_millis;
        // At and after expiry: always, whatever the draw, beta or delta.
        for u in [1.0, 0.5, 1e-9] {
            assert!(is_due(ttl, delta, ttl, 1.0, u));
            assert!(is_due(ttl + ms(1), Duration::ZERO, ttl, 0.0, u));
        }
        // A draw of 1 (−ln u = 0), beta 0 or no computation time: never
        // before expiry.
        for age in [ms(0), ms(30_000), ttl - ms(1)] {
            assert!(!is_due(age, delta, ttl, 1.0, 1.0));
            assert!(!is_due(age, delta, ttl, 0.0, 1e-9));
            assert!(!is_due(age, Duration::ZERO, ttl, 1.0, 1e-9));
        }
        // For one draw, due from one age on: ttl − delta·beta·(−ln u).
        let u = (-1.0_f64).exp(); // −ln u = 1: due from 2 s before expiry
        assert!(!is_due(ttl - ms(2_001), delta, ttl, 1.0, u));
        assert!(is_due(ttl - ms(1_999), delta, ttl, 1.0, u));
        // Twice the beta, twice as early.
        assert!(!is_due(ttl - ms(4_001), delta, ttl, 2.0, u));
        assert!(is_due(ttl - ms(3_999), delta, ttl, 2.0, u));
        // Monotone in age for every draw on a grid.
        for i in 1..=100 {
            let u = f64::from(i) / 100.0;
            let mut was_due = false;
            for age_ms in (0..=60_000).step_by(100) {
                let due = is_due(ms(age_ms), delta, ttl, 1.0, u);
                assert!(due || !was_due, "u {u}, age {age_ms} ms");
                was_due = due;
            }
            assert!(was_due);
        }
    }

    #[test]
    fn with_a_seeded_source_early_refreshes_grow_likelier_as_expiry_nears() {
        let ttl = Duration::from_secs(60);
        let delta = Duration::from_secs(1);
        let share_due = |seconds_left: u64| {
            let early = EarlyRefresh::default().seed(42);
            let age = ttl - Duration::from_secs(seconds_left);
            (0..10_000)
                .filter(|_| early.is_due(age, delta, ttl))
                .count()
        };
        // Expected: 10 000 × e^(−left / delta).
        let shares: Vec<usize> = [30, 5, 2, 1, 0].map(share_due).to_vec();
        assert_eq!(shares[0], 0, "{shares:?}"); // e^-30: never in practice
        assert!(shares.windows(2).all(|w| w[0] < w[1]), "{shares:?}");
        assert!((40..=100).contains(&shares[1]), "{shares:?}"); // ~67
        assert!((3_400..=4_000).contains(&shares[3]), "{shares:?}"); // ~3 679
        assert_eq!(shares[4], 10_000);
        // The same seed, the same decisions.
        assert_eq!(share_due(2), share_due(2));
        // Beta 0: never before expiry.
        let off = EarlyRefresh::OFF;
        assert!((0..1_000).all(|_| !off.is_due(ttl - Duration::from_millis(1), delta, ttl)));
    }

    #[test]
    fn beta_is_finite_and_not_negative() {
        for bad in [f64::NAN, -1.0, f64::NEG_INFINITY, f64::INFINITY, -1e-300] {
            assert!(EarlyRefresh::new(bad).is_err(), "{bad}");
        }
        assert_eq!(
            EarlyRefresh::new(-0.0).unwrap().beta().to_bits(),
            0.0_f64.to_bits()
        );
        assert_eq!(EarlyRefresh::new(0.5).unwrap().beta(), 0.5);
        assert_eq!(EarlyRefresh::default().beta(), 1.0);
    }

    fn tenant(id: &str) -> crate::TenantId {
        crate::TenantId::new(id).unwrap()
    }

    #[test]
    fn generations_are_kept_for_sixty_checks_within_bounds() {
        assert_eq!(keep_for(Duration::from_secs(1)), Duration::from_secs(60));
        assert_eq!(keep_for(Duration::from_millis(10)), Duration::from_secs(1));
        assert_eq!(keep_for(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(keep_for(Duration::MAX), Duration::from_secs(600));
    }

    #[tokio::test(start_paused = true)]
    async fn ten_thousand_tenants_seen_once_are_forgotten_and_a_busy_one_kept() {
        let generations = Generations::new(Duration::from_secs(1));
        let asked = tokio::time::Instant::now();
        for i in 0..10_000 {
            generations.read(&tenant(&format!("t{i}")), 0, asked);
        }
        assert_eq!(generations.len(), 10_000);
        tokio::time::advance(Duration::from_secs(30)).await;
        // A tenant still in use is re-read: kept.
        let asked = tokio::time::Instant::now();
        assert_eq!(
            generations.read(&tenant("t0"), 3, asked),
            (Generation::Known(3), true)
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        // The next new tenant, a minute on, sweeps the rest away.
        generations.read(&tenant("new"), 0, tokio::time::Instant::now());
        assert_eq!(generations.len(), 2);
        assert_eq!(generations.get(&tenant("t0")).unwrap().generation, 3);
        assert!(generations.get(&tenant("t1")).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalidation_made_here_wins_over_an_older_read() {
        let generations = Generations::new(Duration::from_secs(1));
        let asked = tokio::time::Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        generations.set(&tenant("t1"), 5);
        // A read sent before the invalidation and answered after it.
        assert_eq!(
            generations.read(&tenant("t1"), 4, asked),
            (Generation::Known(5), false)
        );
    }

    #[test]
    fn each_period_without_a_known_generation_keys_its_own_values() {
        let generations = Generations::new(Duration::from_secs(1));
        let first = generations.unknown();
        assert_eq!(generations.unknown(), first);
        // Redis answers (for any tenant): the period is over.
        generations.read(&tenant("t1"), 0, tokio::time::Instant::now());
        let second = generations.unknown();
        assert_ne!(second, first);
        let keys =
            [first, second, Generation::Known(0), Generation::Known(1)].map(|g| g.local_key("k"));
        for (i, a) in keys.iter().enumerate() {
            assert!(keys[i + 1..].iter().all(|b| a != b), "{keys:?}");
        }
        assert_eq!(Generation::Known(7).local_key("a:b").as_ref(), "7:a:b");
        assert_eq!(Generation::Known(7).known(), Some(7));
        assert_eq!(first.known(), None);
    }
}
