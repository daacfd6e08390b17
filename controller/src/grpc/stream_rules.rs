//! The rules of one agent stream after its Hello, as a small pure state
//! machine: when a published set is pushed, when the agent's Hello stands
//! for its report instead (adoption), which report answers which push, and
//! when a connection past its age cap may end.
//!
//! Exists so that each rule reads in one place and is tested with plain
//! `#[test]`s; [`super::agent_service`] only performs what these rules
//! decide (it sends, records in the fleet, counts and logs). It must never
//! do I/O, read a clock or draw a random number (the nonce is handed in),
//! nor touch the fleet: a decision that needs the fleet (adopt, record) is
//! returned to the caller, which says back what came of it.

use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use multinic_proto::{AgentReport, Digest};

use crate::claims::{self, ClaimError};
use crate::fleet::Published;

/// Once a connection reached its age cap, how long its stream may still wait
/// for the report of a push the agent is applying before it ends anyway.
pub const AGE_REPORT_GRACE: Duration = Duration::from_secs(60);

/// What the stream does with the node's newly published set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnPublished {
    /// Nothing: the agent has processed this set and the stream already
    /// pushed or adopted it.
    Nothing,
    /// The agent has this set already (it connected before the set was
    /// published, e.g. just after a controller start): try to take its
    /// Hello as its report, then [`StreamRules::adopted`].
    Adopt,
    /// Push it, then [`StreamRules::pushed`].
    Push,
}

/// What the connection age cap means now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgeStep {
    /// First reached: take no new pushes, and wait this long at most for
    /// the report of the push being applied.
    Grace(Duration),
    /// Reached again (the grace ran out): end the stream now.
    End,
}

/// Why a report is not recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Its nonce names no push of this stream (or not the newest).
    NoSuchPush,
    /// Its digest is not the digest of the set its nonce names.
    DigestMismatch,
    /// It does not fit the push it answers ([`claims::check_report`]).
    NotBelieved(ClaimError),
}

impl Refusal {
    /// The `reason` label of `rejected_messages_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoSuchPush => "stale",
            Self::DigestMismatch => "digest_mismatch",
            Self::NotBelieved(e) => e.reason(),
        }
    }

    /// What was refused, for the debug line of the rejection.
    pub fn what(&self) -> &'static str {
        match self {
            Self::NoSuchPush => "stale Report",
            Self::DigestMismatch => "Report digest mismatch",
            Self::NotBelieved(_) => "Report not believed",
        }
    }
}

/// The set this stream pushed (or adopted) last, which a report may answer.
#[derive(Debug)]
struct Sent {
    published: Arc<Published>,
    /// 0 for an adopted set (no push carried a nonce).
    nonce: u64,
    /// Whether a report answered it yet (latency is measured once).
    answered: bool,
}

/// The state of one agent stream after Hello.
#[derive(Debug)]
pub struct StreamRules {
    /// The digest of what the agent has processed: its Hello's, then each
    /// push's. Nothing is pushed while the published set has it.
    agent_digest: Option<Digest>,
    sent: Option<Sent>,
    /// The connection reached its age cap.
    aged: bool,
}

impl StreamRules {
    /// A stream whose Hello said the agent processed the set of `applied`.
    pub fn new(applied: Option<Digest>) -> Self {
        Self { agent_digest: applied, sent: None, aged: false }
    }

    /// Whether the agent's Hello may still stand for its report on the
    /// published set: only until the stream pushed or adopted anything.
    pub fn may_adopt(&self) -> bool {
        self.sent.is_none()
    }

    /// The fleet took the Hello as the agent's report on `published`.
    pub fn adopted(&mut self, published: Arc<Published>) {
        self.sent = Some(Sent { published, nonce: 0, answered: true });
    }

    /// What to do with the node's newly published set.
    pub fn on_published(&self, current: &Published) -> OnPublished {
        match self.agent_digest.as_ref() == Some(current.set.digest()) {
            true if self.may_adopt() => OnPublished::Adopt,
            true => OnPublished::Nothing,
            false => OnPublished::Push,
        }
    }

    /// `published` was pushed with `nonce`: the agent will process it, and
    /// only a report with that nonce answers it.
    pub fn pushed(&mut self, published: Arc<Published>, nonce: NonZeroU64) {
        self.agent_digest = Some(published.set.digest().clone());
        self.sent = Some(Sent { published, nonce: nonce.get(), answered: false });
    }

    /// Whether the stream takes newly published sets (not once it aged).
    pub fn takes_pushes(&self) -> bool {
        !self.aged
    }

    /// The set `report` answers, if it answers this stream's last push (or
    /// adopted set) and fits it.
    pub fn answered(&self, report: &AgentReport) -> Result<Arc<Published>, Refusal> {
        let sent = self.sent.as_ref().filter(|s| s.nonce == report.nonce).ok_or(Refusal::NoSuchPush)?;
        if report.digest.as_ref() != Some(sent.published.set.digest()) {
            return Err(Refusal::DigestMismatch);
        }
        claims::check_report(&sent.published.set, sent.published.generation, report).map_err(Refusal::NotBelieved)?;
        Ok(sent.published.clone())
    }

    /// The fleet recorded a report [`Self::answered`] accepted; true the
    /// first time for this push (the push's latency is measured then).
    pub fn recorded(&mut self) -> bool {
        match self.sent.as_mut() {
            Some(sent) if !sent.answered => {
                sent.answered = true;
                true
            }
            _ => false,
        }
    }

    /// The connection age cap (or the grace after it) ran out.
    pub fn age_limit(&mut self) -> AgeStep {
        if self.aged {
            return AgeStep::End;
        }
        self.aged = true;
        AgeStep::Grace(AGE_REPORT_GRACE)
    }

    /// Whether the stream ends now for its age: it aged, and no push awaits
    /// its report.
    pub fn ends_for_age(&self) -> bool {
        self.aged && self.sent.as_ref().is_none_or(|s| s.answered)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use multinic_proto::{DesiredSet, InterfaceSpec, MacAddress, Mtu, Outcome};

    use super::*;

    fn published(generation: u64, interfaces: u8) -> Arc<Published> {
        let spec = |i| InterfaceSpec::new(MacAddress::from_octets([2, 0, 0, 0, 0, i]).unwrap(), None, Mtu::DEFAULT);
        let set = DesiredSet::new((1..=interfaces).map(|i| spec(i).unwrap())).unwrap();
        Arc::new(Published { generation, set, at: Instant::now() })
    }

    fn report(on: &Published, nonce: u64) -> AgentReport {
        AgentReport {
            generation: on.generation,
            nonce,
            digest: Some(on.set.digest().clone()),
            outcome: Outcome::Applied,
            interfaces: Vec::new(),
            error: String::new(),
            drift: Vec::new(),
        }
    }

    fn nonce(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).unwrap()
    }

    #[test]
    fn a_hello_with_the_published_digest_is_adopted_once() {
        let set = published(1, 1);
        let mut rules = StreamRules::new(Some(set.set.digest().clone()));
        assert!(rules.may_adopt(), "at connect, before anything was pushed");
        assert_eq!(rules.on_published(&set), OnPublished::Adopt);
        rules.adopted(set.clone());
        assert!(!rules.may_adopt());
        assert_eq!(rules.on_published(&set), OnPublished::Nothing, "adopted once, never pushed");
        // An adopted set needs no answer: the Hello was it.
        assert!(!rules.recorded());
        // A report with nonce 0 answers the adopted set (no push carried a nonce).
        assert_eq!(rules.answered(&report(&set, 0)), Ok(set));
    }

    #[test]
    fn a_set_the_agent_lacks_is_pushed_once() {
        let (one, two) = (published(1, 1), published(2, 2));
        let mut rules = StreamRules::new(None);
        assert_eq!(rules.on_published(&one), OnPublished::Push);
        rules.pushed(one.clone(), nonce(7));
        assert_eq!(rules.on_published(&one), OnPublished::Nothing, "the agent has it now");
        assert_eq!(rules.on_published(&two), OnPublished::Push);
        // A Hello with another digest never adopts.
        let rules = StreamRules::new(Some(two.set.digest().clone()));
        assert_eq!(rules.on_published(&one), OnPublished::Push);
    }

    #[test]
    fn a_set_the_agent_has_after_a_push_is_not_adopted() {
        let (one, two) = (published(1, 1), published(2, 2));
        let mut rules = StreamRules::new(Some(one.set.digest().clone()));
        rules.pushed(two, nonce(3));
        // The agent went back to the set it had (the rows were reverted):
        // pushed again, since the stream's last push was another set.
        assert_eq!(rules.on_published(&one), OnPublished::Push);
    }

    #[test]
    fn a_report_answers_only_the_newest_push_by_nonce_and_digest() {
        let (one, two) = (published(1, 1), published(2, 2));
        let mut rules = StreamRules::new(None);
        assert_eq!(rules.answered(&report(&one, 7)), Err(Refusal::NoSuchPush), "nothing pushed yet");
        rules.pushed(one.clone(), nonce(7));
        assert_eq!(rules.answered(&report(&one, 8)), Err(Refusal::NoSuchPush));
        assert_eq!(rules.answered(&report(&one, 0)), Err(Refusal::NoSuchPush), "0 answers only an adopted set");
        let mut wrong = report(&one, 7);
        wrong.digest = Some(two.set.digest().clone());
        assert_eq!(rules.answered(&wrong), Err(Refusal::DigestMismatch));
        wrong.digest = None;
        assert_eq!(rules.answered(&wrong), Err(Refusal::DigestMismatch));
        assert_eq!(rules.answered(&report(&one, 7)), Ok(one.clone()));
        rules.pushed(two.clone(), nonce(9));
        assert_eq!(rules.answered(&report(&one, 7)), Err(Refusal::NoSuchPush), "superseded");
        assert_eq!(rules.answered(&report(&two, 9)), Ok(two));
        for (refusal, reason) in [(Refusal::NoSuchPush, "stale"), (Refusal::DigestMismatch, "digest_mismatch")] {
            assert_eq!(refusal.reason(), reason);
        }
    }

    #[test]
    fn a_report_that_does_not_fit_its_push_is_not_believed() {
        let one = published(4, 1);
        let mut rules = StreamRules::new(None);
        rules.pushed(one.clone(), nonce(5));
        let mut other_generation = report(&one, 5);
        other_generation.generation = 3;
        let refusal = rules.answered(&other_generation).unwrap_err();
        assert!(
            matches!(refusal, Refusal::NotBelieved(ClaimError::Generation { reported: 3, pushed: 4 })),
            "{refusal:?}"
        );
        assert_eq!(refusal.reason(), "generation_mismatch");
        let mut wrong_outcome = report(&one, 5);
        wrong_outcome.outcome = Outcome::Partial;
        assert_eq!(rules.answered(&wrong_outcome).unwrap_err().reason(), "inconsistent");
    }

    #[test]
    fn the_first_recorded_answer_of_each_push_is_the_one_measured() {
        let (one, two) = (published(1, 1), published(2, 2));
        let mut rules = StreamRules::new(None);
        assert!(!rules.recorded(), "nothing pushed");
        rules.pushed(one, nonce(1));
        assert!(rules.recorded());
        assert!(!rules.recorded(), "later reports (rechecks, drift) are not latency");
        rules.pushed(two, nonce(2));
        assert!(rules.recorded());
    }

    #[test]
    fn an_aged_stream_waits_for_the_push_being_applied_then_ends() {
        let one = published(1, 1);
        let mut rules = StreamRules::new(None);
        rules.pushed(one, nonce(1));
        assert!(!rules.ends_for_age());
        assert_eq!(rules.age_limit(), AgeStep::Grace(AGE_REPORT_GRACE));
        assert!(!rules.takes_pushes(), "no new push on an aged connection");
        assert!(!rules.ends_for_age(), "the push being applied is still unanswered");
        rules.recorded();
        assert!(rules.ends_for_age(), "answered: reconnect now");

        // Never answered: the grace ends the stream.
        let mut rules = StreamRules::new(None);
        rules.pushed(published(1, 1), nonce(1));
        assert_eq!(rules.age_limit(), AgeStep::Grace(AGE_REPORT_GRACE));
        assert_eq!(rules.age_limit(), AgeStep::End);
    }

    #[test]
    fn an_aged_stream_with_nothing_outstanding_ends_at_once() {
        let mut rules = StreamRules::new(None);
        assert!(rules.takes_pushes());
        assert!(!rules.ends_for_age());
        assert_eq!(rules.age_limit(), AgeStep::Grace(AGE_REPORT_GRACE));
        assert!(rules.ends_for_age(), "nothing pushed");
        let mut adopted = StreamRules::new(None);
        adopted.adopted(published(1, 1));
        adopted.age_limit();
        assert!(adopted.ends_for_age(), "an adopted set awaits no report");
    }
}
