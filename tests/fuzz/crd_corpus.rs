//! The CRD corpus and the oracle, without a cluster: the oracle agrees with every
//! corpus verdict, what it accepts the operator can decode, and a request it accepts
//! plans only items it accepts too. The API server's side is `tests/e2e/crd_fuzz.rs`.

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;
use triad::api::{MAX_PAYLOAD_DEPTH, WorkRequest};
use triad::core::graph;

use crate::config;
use crate::crd_model::{
    self, Kind, as_stored, check_free_forms, crd_corpus, free_form_depths, generate,
    planned_item_json, violations,
};

#[test]
fn every_crd_corpus_object_gets_the_oracle_verdict() {
    let corpus = crd_corpus();
    let mut failures = Vec::new();
    for case in &corpus {
        let found = violations(case.kind, &case.object);
        if found.is_empty() != case.valid {
            failures.push(format!(
                "{}: corpus says {}, oracle found {found:?}",
                case.file,
                if case.valid { "valid" } else { "invalid" }
            ));
        }
        if case.valid {
            let mut object = case.object.clone();
            as_stored(&mut object);
            if let Err(e) = case.kind.decode(&object.to_string()) {
                failures.push(format!("{}: valid but does not decode: {e}", case.file));
            } else if let Err(e) = check_free_forms(case.kind, &case.object, &object.to_string()) {
                failures.push(format!("{}: {e}", case.file));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} corpus objects disagree:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
}

#[test]
fn the_corpus_covers_every_kind_both_ways() {
    let corpus = crd_corpus();
    for kind in Kind::ALL {
        for valid in [true, false] {
            assert!(
                corpus.iter().any(|c| c.kind == kind && c.valid == valid),
                "no {} {kind:?} in the corpus",
                if valid { "valid" } else { "invalid" }
            );
        }
    }
}

/// `# plan:` records what the scheduler makes of a request the API server accepts:
/// cycles and unknown dependencies are the scheduler's to refuse, not the schema's.
#[test]
fn corpus_requests_plan_as_recorded() {
    for case in crd_corpus()
        .iter()
        .filter(|c| c.kind == Kind::WorkRequest && c.valid)
    {
        let want = case
            .plan
            .as_deref()
            .unwrap_or_else(|| panic!("{}: valid requests record `# plan:`", case.file));
        let request: WorkRequest =
            serde_json::from_value(case.object.clone()).expect("valid requests decode");
        let got = match graph::plan("req", &request.spec) {
            Ok(items) => {
                for item in &items {
                    let found = violations(Kind::WorkItem, &planned_item_json(item));
                    assert!(
                        found.is_empty(),
                        "{}: planned item {} is invalid: {found:?}",
                        case.file,
                        item.name
                    );
                }
                "ok".to_string()
            }
            Err(e) => e.reason().to_string(),
        };
        assert_eq!(got, want, "{}", case.file);
    }
}

/// The generator must exercise both verdicts for every kind, or the e2e comparison
/// proves little.
#[test]
fn the_generator_produces_both_verdicts() {
    let mut rng = StdRng::seed_from_u64(7);
    for kind in Kind::ALL {
        let valid = (0..400)
            .filter(|i| violations(kind, &generate(&mut rng, kind, &format!("g-{i}"))).is_empty())
            .count();
        assert!(
            (40..=360).contains(&valid),
            "{kind:?}: {valid} of 400 generated objects valid"
        );
    }
}

proptest! {
    #![proptest_config(config(300))]

    /// What the oracle accepts, the operator decodes; a request it accepts plans items it
    /// accepts (or the scheduler refuses the plan with a reason).
    #[test]
    fn oracle_valid_objects_decode_and_plan_valid_items(seed in any::<u64>()) {
        let mut rng = StdRng::seed_from_u64(seed);
        for kind in Kind::ALL {
            let mut object = generate(&mut rng, kind, "fuzz");
            if !violations(kind, &object).is_empty() {
                continue;
            }
            let sent = object.clone();
            as_stored(&mut object);
            if let Err(e) = kind.decode(&object.to_string()) {
                prop_assert!(false, "{kind:?} is oracle-valid but does not decode: {e}\n{object}");
            }
            if let Err(e) = check_free_forms(kind, &sent, &object.to_string()) {
                prop_assert!(false, "{kind:?}: {e}");
            }
            if kind == Kind::WorkRequest {
                let request: WorkRequest =
                    serde_json::from_value(object.clone()).expect("decoded above");
                let too_deep = free_form_depths(kind, &sent).iter().any(|(path, depth)| {
                    *depth > MAX_PAYLOAD_DEPTH - usize::from(path.contains("forEach"))
                });
                match graph::plan("fuzz", &request.spec) {
                    Ok(items) => {
                        prop_assert!(!too_deep, "a too-deep request planned items");
                        for item in &items {
                            let found = violations(Kind::WorkItem, &planned_item_json(item));
                            prop_assert!(
                                found.is_empty(),
                                "planned item {} invalid: {found:?}\n{object}",
                                item.name
                            );
                            // And the scheduler would run it, not fail it for depth.
                            let depth = item
                                .spec
                                .payload
                                .as_ref()
                                .map_or(0, |p| p.value().map_or(usize::MAX, triad::api::depth));
                            prop_assert!(depth <= MAX_PAYLOAD_DEPTH, "planned item {} is {depth} deep", item.name);
                        }
                    }
                    Err(e) if too_deep => {
                        // Other refusals may come first; a depth refusal names a field.
                        if let graph::GraphError::PayloadTooDeep { field, .. } = &e {
                            prop_assert!(e.to_string().contains(field.as_str()));
                        }
                    }
                    Err(e) => prop_assert!(
                        e.reason() != "PayloadTooDeep",
                        "refused for depth, but no field is too deep: {e}"
                    ),
                }
            }
        }
    }
}

/// The generator nests schemaless fields beyond the operator's limit and beyond
/// serde_json's, or the decoding checks above prove little.
#[test]
fn the_generator_nests_schemaless_fields_deep() {
    let mut rng = StdRng::seed_from_u64(11);
    for kind in [Kind::WorkItem, Kind::WorkRequest, Kind::AgentPool] {
        let deepest = (0..400)
            .flat_map(|i| free_form_depths(kind, &generate(&mut rng, kind, &format!("g-{i}"))))
            .map(|(_, depth)| depth)
            .max();
        assert!(
            deepest.is_some_and(|d| d >= 130),
            "{kind:?}: deepest {deepest:?}"
        );
    }
}

#[test]
fn decodable_times() {
    for (t, ok) in [
        ("2030-01-01T00:00:00Z", true),
        ("2030-01-01T00:00:00.123456789+05:30", true),
        ("2030-01-01t00:00:00z", false),
        ("2030-01-01T00:00:00+24:00", true),
        ("2024-02-29T00:00:00Z", true),
        ("9999-12-30T00:00:00Z", true),
        ("0001-01-01T00:00:00Z", true),
        ("2023-02-29T00:00:00Z", false),
        ("2030-01-01T00:00:00", false),
        ("2030-01-01 00:00:00Z", false),
        ("2030-01-01T00:00:00.1234567891Z", false),
        ("9999-12-30T00:00:00.000000001Z", false),
        ("0000-06-01T00:00:00Z", false),
        ("0001-01-01T00:00:00+00:01", false),
    ] {
        assert_eq!(crd_model::is_decodable_time(t), ok, "{t}");
    }
}
