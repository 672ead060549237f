//! W1's live journey (SPEC §13 "the browse-abandon journey of §6 is live"): `bench`
//! publishes its templates and journey on the fresh node before the workload starts, so
//! every `Product Viewed` can enter it, emails and SMS are decided, rendered and
//! captured, and opens and clicks move customers through it.

use chorus_proto::v1;
use tonic::transport::Channel;

const JOURNEY: &str = include_str!("../w1/browse-abandon.yaml");
const TEMPLATES: &str = include_str!("../w1/templates.yaml");

/// Apply W1's templates, then its journey. Returns the journey's version.
pub async fn publish(channel: Channel) -> anyhow::Result<u32> {
    let mut templates = v1::templates_client::TemplatesClient::new(channel.clone());
    for (i, source) in TEMPLATES.split("\n---\n").enumerate() {
        let req = v1::ApplyTemplateRequest { source: source.to_string(), file_name: format!("w1/templates.yaml#{i}") };
        templates.apply(req).await.map_err(|s| anyhow::anyhow!("apply W1 template {i}: {}", s.message()))?;
    }
    let mut journeys = v1::journeys_client::JourneysClient::new(channel);
    let req = v1::ApplyJourneyRequest { source: JOURNEY.to_string(), file_name: "w1/browse-abandon.yaml".into() };
    let r = journeys.apply(req).await.map_err(|s| anyhow::anyhow!("apply the W1 journey: {}", s.message()))?;
    Ok(r.into_inner().version)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_w1_journey_and_templates_are_valid() {
        let j = chorus_engine::journey::load_journey(super::JOURNEY, &Default::default());
        assert!(j.is_ok(), "{j:?}");
        for (i, t) in super::TEMPLATES.split("\n---\n").enumerate() {
            let t = chorus_templates::parse(t, &format!("templates#{i}"));
            assert!(t.is_ok(), "{:?}", t.err());
        }
    }
}
