//! Workload agreements: the spec users write, its canonical signed form and
//! the envelope that carries the signature.
//!
//! A spec is written in YAML ([`Spec::from_yaml`]; unknown fields are an
//! error). Defaults are filled in before signing, so the signed bytes say
//! everything the cluster will do. What is signed is [`Spec::canonical`]
//! (prefix `docklock-agreement-v1`); the [`Envelope`] adds the signer's key
//! and the signature (prefix `docklock-envelope-v1`), and the agreement id is
//! SHA3-256 of the envelope's canonical bytes. `docs/FORMATS.md` specifies
//! both byte layouts.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use sha3::{Digest as _, Sha3_256};

use crate::canonical::{DecodeError, Reader, Writer};
use crate::crypto::{KeyPair, PublicKey, Signature};

/// Domain prefix of a signed spec.
pub const SPEC_PREFIX: &str = "docklock-agreement-v1";
/// Domain prefix of an envelope.
pub const ENVELOPE_PREFIX: &str = "docklock-envelope-v1";
/// Largest canonical spec, in bytes.
pub const SPEC_BYTES_MAX: usize = 64 * 1024;
/// Largest envelope: a maximal spec plus the largest key and signature.
pub const ENVELOPE_BYTES_MAX: usize = SPEC_BYTES_MAX + 16 * 1024;
/// Most replicas an agreement may ask for.
pub const REPLICAS_MAX: u32 = 16;
/// Longest timeout, in seconds (one day).
pub const TIMEOUT_SECS_MAX: u64 = 86_400;
const LIST_ITEMS_MAX: usize = 256;
const STRING_BYTES_MAX: usize = 4096;
const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// A SHA3-256 content digest, written `sha3-256:<64 hex>`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha3_256::digest(bytes).into())
    }

    /// Parse `sha3-256:<64 hex>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex_part = text
            .strip_prefix("sha3-256:")
            .ok_or_else(|| format!("digest {text:?} must be written sha3-256:<64 hex characters>"))?;
        let bytes = hex::decode(hex_part).map_err(|e| format!("digest {text:?} is not hex: {e}"))?;
        bytes.try_into().map(Self).map_err(|_| format!("digest {text:?} is not 32 bytes"))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha3-256:{}", hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// What runs: a static program or a root filesystem image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// A program artifact, run on the host rootfs view.
    Program(Digest),
    /// A rootfs tarball or OCI image artifact.
    Image(Digest),
}

/// Resource limits of one run. Every field is explicit in the signed spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// CPU time, milliseconds.
    pub cpu_ms: u64,
    /// Wall time, milliseconds.
    pub wall_ms: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Processes and threads.
    pub processes: u64,
    /// Open files.
    pub open_files: u64,
    /// Bytes written to stdout, stderr and `/out` together.
    pub output_bytes: u64,
    /// Largest file the workload may write.
    pub file_size_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu_ms: 60_000,
            wall_ms: 120_000,
            memory_mib: 512,
            processes: 64,
            open_files: 256,
            output_bytes: 64 << 20,
            file_size_bytes: 64 << 20,
        }
    }
}

/// Where an agreement may run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    /// Allowed zones (empty: any).
    pub zones: Vec<String>,
    /// Allowed node types (empty: any).
    pub node_types: Vec<String>,
    /// Labels a node must carry with these values.
    pub labels: BTreeMap<String, String>,
}

/// Node types a constraint may name.
pub const NODE_TYPES: [&str; 5] = ["compute", "storage", "gateway", "validator", "hybrid"];

/// An agreement spec as written in YAML.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecYaml {
    #[serde(default)]
    program: Option<Digest>,
    #[serde(default)]
    image: Option<Digest>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    inputs: BTreeMap<String, Digest>,
    #[serde(default)]
    limits: Limits,
    replicas: u32,
    #[serde(default)]
    constraints: Constraints,
    timeout_secs: u64,
    #[serde(default)]
    seed: Option<String>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// A validated agreement spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Spec {
    /// What runs.
    pub workload: Workload,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// Environment (the cage starts from an empty one).
    pub env: BTreeMap<String, String>,
    /// Input files under `/in`, by relative name.
    pub inputs: BTreeMap<String, Digest>,
    /// Resource limits.
    pub limits: Limits,
    /// Replica count `k`: how many nodes run it and must agree.
    pub replicas: u32,
    /// Placement constraints.
    pub constraints: Constraints,
    /// Time from admission after which the run is timed out.
    pub timeout_secs: u64,
    /// Seed of the cage's virtual randomness; `None` derives it from the id.
    pub seed: Option<[u8; 32]>,
    /// Unique per signer: a second agreement with the same key is refused.
    pub idempotency_key: String,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
}

/// Why a spec is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The YAML does not parse or has unknown fields.
    #[error("spec does not parse: {0}")]
    Yaml(String),
    /// A field is out of its allowed range.
    #[error("spec field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The spec is larger than [`SPEC_BYTES_MAX`].
    #[error("spec is {0} bytes encoded, more than {SPEC_BYTES_MAX}")]
    TooLarge(usize),
    /// The canonical bytes do not decode.
    #[error("spec encoding: {0}")]
    Decode(#[from] DecodeError),
}

fn field(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Field { field, reason: reason.into() }
}

fn check_strings<'a>(name: &'static str, items: impl ExactSizeIterator<Item = &'a String>) -> Result<(), SpecError> {
    if items.len() > LIST_ITEMS_MAX {
        return Err(field(name, format!("{} items, at most {LIST_ITEMS_MAX}", items.len())));
    }
    for item in items {
        if item.len() > STRING_BYTES_MAX || item.contains('\0') {
            return Err(field(name, format!("items must be at most {STRING_BYTES_MAX} bytes without NUL")));
        }
    }
    Ok(())
}

fn check_input_name(name: &str) -> Result<(), SpecError> {
    let valid = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('/')
        && !name.contains('\0')
        && name.split('/').all(|part| !part.is_empty() && part != "." && part != "..");
    if valid {
        Ok(())
    } else {
        Err(field("inputs", format!("{name:?} must be a relative path without '.', '..' or empty parts")))
    }
}

impl Spec {
    /// Parse and validate a YAML spec, filling in defaults.
    pub fn from_yaml(text: &str) -> Result<Self, SpecError> {
        if text.len() > SPEC_BYTES_MAX * 4 {
            return Err(SpecError::TooLarge(text.len()));
        }
        let yaml: SpecYaml = serde_yaml::from_str(text).map_err(|e| SpecError::Yaml(e.to_string()))?;
        let workload = match (yaml.program, yaml.image) {
            (Some(program), None) => Workload::Program(program),
            (None, Some(image)) => Workload::Image(image),
            (None, None) => return Err(field("program", "one of program or image (a sha3-256 digest) is required")),
            (Some(_), Some(_)) => return Err(field("program", "give program or image, not both")),
        };
        let seed = yaml
            .seed
            .map(|text| {
                hex::decode(&text)
                    .ok()
                    .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                    .ok_or_else(|| field("seed", "must be 64 hex characters (32 bytes)"))
            })
            .transpose()?;
        let mut spec = Spec {
            workload,
            args: yaml.args,
            env: yaml.env,
            inputs: yaml.inputs,
            limits: yaml.limits,
            replicas: yaml.replicas,
            constraints: yaml.constraints,
            timeout_secs: yaml.timeout_secs,
            seed,
            idempotency_key: yaml.idempotency_key.unwrap_or_default(),
            labels: yaml.labels,
        };
        if spec.idempotency_key.is_empty() {
            // Without an explicit key, the same spec submitted again (even
            // re-signed) is the same agreement: what a retrying user expects.
            spec.idempotency_key = format!("spec-{}", &hex::encode(Sha3_256::digest(spec.canonical()))[..32]);
        }
        spec.validate()?;
        Ok(spec)
    }

    /// Check every bound; [`Spec::decode`] calls it, so a decoded spec is valid.
    pub fn validate(&self) -> Result<(), SpecError> {
        check_strings("args", self.args.iter())?;
        check_strings("env", self.env.keys())?;
        check_strings("env", self.env.values())?;
        if let Some(key) = self.env.keys().find(|key| key.is_empty() || key.contains('=')) {
            return Err(field("env", format!("name {key:?} must be non-empty without '='")));
        }
        if self.inputs.len() > LIST_ITEMS_MAX {
            return Err(field("inputs", format!("at most {LIST_ITEMS_MAX} inputs")));
        }
        self.inputs.keys().try_for_each(|name| check_input_name(name))?;
        if !(1..=REPLICAS_MAX).contains(&self.replicas) {
            return Err(field("replicas", format!("must be 1 to {REPLICAS_MAX}, got {}", self.replicas)));
        }
        if !(1..=TIMEOUT_SECS_MAX).contains(&self.timeout_secs) {
            return Err(field("timeout_secs", format!("must be 1 to {TIMEOUT_SECS_MAX}, got {}", self.timeout_secs)));
        }
        let limits = &self.limits;
        let limit_values = [
            ("limits.cpu_ms", limits.cpu_ms),
            ("limits.wall_ms", limits.wall_ms),
            ("limits.memory_mib", limits.memory_mib),
            ("limits.processes", limits.processes),
            ("limits.open_files", limits.open_files),
            ("limits.output_bytes", limits.output_bytes),
            ("limits.file_size_bytes", limits.file_size_bytes),
        ];
        if let Some((name, _)) = limit_values.iter().find(|(_, value)| *value == 0) {
            return Err(field(name, "must be positive"));
        }
        check_strings("constraints.zones", self.constraints.zones.iter())?;
        if let Some(unknown) = self.constraints.node_types.iter().find(|t| !NODE_TYPES.contains(&t.as_str())) {
            return Err(field("constraints.node_types", format!("{unknown:?} is not one of {NODE_TYPES:?}")));
        }
        check_strings("constraints.labels", self.constraints.labels.keys())?;
        check_strings("constraints.labels", self.constraints.labels.values())?;
        check_strings("labels", self.labels.keys())?;
        check_strings("labels", self.labels.values())?;
        if self.idempotency_key.is_empty() || self.idempotency_key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(field("idempotency_key", format!("must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes")));
        }
        let encoded = self.canonical().len();
        if encoded > SPEC_BYTES_MAX {
            return Err(SpecError::TooLarge(encoded));
        }
        Ok(())
    }

    /// The canonical bytes that are signed.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::with_prefix(SPEC_PREFIX);
        match self.workload {
            Workload::Program(digest) => w.u8(1).fixed(&digest.0),
            Workload::Image(digest) => w.u8(2).fixed(&digest.0),
        };
        w.strs(&self.args).str_map(&self.env);
        w.u32(self.inputs.len() as u32);
        for (name, digest) in &self.inputs {
            w.str(name).fixed(&digest.0);
        }
        let l = &self.limits;
        w.u64(l.cpu_ms).u64(l.wall_ms).u64(l.memory_mib).u64(l.processes).u64(l.open_files);
        w.u64(l.output_bytes).u64(l.file_size_bytes);
        w.u32(self.replicas);
        w.strs(&self.constraints.zones).strs(&self.constraints.node_types).str_map(&self.constraints.labels);
        w.u64(self.timeout_secs);
        match &self.seed {
            Some(seed) => w.u8(1).fixed(seed),
            None => w.u8(0),
        };
        w.str(&self.idempotency_key).str_map(&self.labels);
        w.finish()
    }

    /// Decode and validate canonical bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, SpecError> {
        if bytes.len() > SPEC_BYTES_MAX {
            return Err(SpecError::TooLarge(bytes.len()));
        }
        let mut r = Reader::with_prefix(bytes, SPEC_PREFIX)?;
        let workload = match r.u8("workload kind")? {
            1 => Workload::Program(Digest(r.array("program digest")?)),
            2 => Workload::Image(Digest(r.array("image digest")?)),
            other => return Err(DecodeError::invalid("workload kind", format!("unknown kind {other}")).into()),
        };
        let args = r.strs("args")?;
        let env = r.str_map("env")?;
        let count = r.u32("inputs")? as usize;
        if count > LIST_ITEMS_MAX {
            return Err(field("inputs", format!("at most {LIST_ITEMS_MAX} inputs")));
        }
        let mut inputs = BTreeMap::new();
        for _ in 0..count {
            let name = r.str("input name")?;
            if inputs.last_key_value().is_some_and(|(last, _): (&String, _)| *last >= name) {
                return Err(DecodeError::invalid("inputs", "names not in strictly increasing order").into());
            }
            inputs.insert(name, Digest(r.array("input digest")?));
        }
        let limits = Limits {
            cpu_ms: r.u64("limits")?,
            wall_ms: r.u64("limits")?,
            memory_mib: r.u64("limits")?,
            processes: r.u64("limits")?,
            open_files: r.u64("limits")?,
            output_bytes: r.u64("limits")?,
            file_size_bytes: r.u64("limits")?,
        };
        let replicas = r.u32("replicas")?;
        let constraints =
            Constraints { zones: r.strs("zones")?, node_types: r.strs("node types")?, labels: r.str_map("labels")? };
        let timeout_secs = r.u64("timeout")?;
        let seed = if r.bool("seed present")? { Some(r.array("seed")?) } else { None };
        let idempotency_key = r.str("idempotency key")?;
        let labels = r.str_map("labels")?;
        r.finish()?;
        let spec = Spec {
            workload,
            args,
            env,
            inputs,
            limits,
            replicas,
            constraints,
            timeout_secs,
            seed,
            idempotency_key,
            labels,
        };
        spec.validate()?;
        Ok(spec)
    }

    /// The spec as YAML (the same fields [`Spec::from_yaml`] reads).
    pub fn to_yaml(&self) -> String {
        let (program, image) = match self.workload {
            Workload::Program(digest) => (Some(digest), None),
            Workload::Image(digest) => (None, Some(digest)),
        };
        let yaml = SpecYaml {
            program,
            image,
            args: self.args.clone(),
            env: self.env.clone(),
            inputs: self.inputs.clone(),
            limits: self.limits.clone(),
            replicas: self.replicas,
            constraints: self.constraints.clone(),
            timeout_secs: self.timeout_secs,
            seed: self.seed.map(hex::encode),
            idempotency_key: Some(self.idempotency_key.clone()),
            labels: self.labels.clone(),
        };
        serde_yaml::to_string(&yaml).expect("spec encodes as YAML")
    }
}

/// A signed canonical message: a spec as a client submits it, or an
/// identity change an admin signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The canonical bytes that were signed (they start with their own
    /// domain prefix, which says what they are).
    pub message: Vec<u8>,
    /// The signer's key.
    pub signer: PublicKey,
    /// The signature over `message`.
    pub signature: Signature,
}

/// Why an envelope is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Larger than [`ENVELOPE_BYTES_MAX`].
    #[error("envelope is {0} bytes, more than {ENVELOPE_BYTES_MAX}")]
    TooLarge(usize),
    /// Not a canonical envelope (includes keys and signatures of the wrong
    /// length or unknown algorithm).
    #[error("envelope encoding: {0}")]
    Decode(#[from] DecodeError),
}

impl Envelope {
    /// Sign canonical `message` bytes with `key`.
    pub fn sign(message: Vec<u8>, key: &KeyPair) -> Self {
        let signature = key.sign(&message);
        Self { message, signer: key.public().clone(), signature }
    }

    /// Check the signature (only the signer key's algorithm verifies).
    pub fn verify(&self) -> Result<(), crate::crypto::CryptoError> {
        self.signer.verify(&self.message, &self.signature)
    }

    /// The canonical envelope bytes.
    pub fn canonical(&self) -> Vec<u8> {
        let mut w = Writer::with_prefix(ENVELOPE_PREFIX);
        w.bytes(&self.message);
        self.signer.encode(&mut w);
        self.signature.encode(&mut w);
        w.finish()
    }

    /// Decode canonical envelope bytes. The signature is not checked here.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > ENVELOPE_BYTES_MAX {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let mut r = Reader::with_prefix(bytes, ENVELOPE_PREFIX)?;
        let message = r.bytes("message")?.to_vec();
        let signer = PublicKey::decode(&mut r)?;
        let signature = Signature::decode(&mut r)?;
        r.finish()?;
        Ok(Self { message, signer, signature })
    }

    /// The agreement id: SHA3-256 of the canonical envelope.
    pub fn id(&self) -> AgreementId {
        AgreementId(Sha3_256::digest(self.canonical()).into())
    }
}

/// An agreement's id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AgreementId(pub [u8; 32]);

impl AgreementId {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("agreement id {text:?} is not hex: {e}"))?;
        bytes.try_into().map(Self).map_err(|_| format!("agreement id {text:?} is not 32 bytes (64 hex characters)"))
    }
}

impl fmt::Display for AgreementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for AgreementId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgreementId({})", &self.to_hex()[..16])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Algorithm;

    pub(crate) const SAMPLE: &str = "
program: sha3-256:0000000000000000000000000000000000000000000000000000000000000001
args: [--rows, '100']
env: {MODE: fast}
inputs: {data/rows.csv: 'sha3-256:0000000000000000000000000000000000000000000000000000000000000002'}
limits: {memory_mib: 256}
replicas: 3
constraints: {zones: [eu-1], node_types: [compute]}
timeout_secs: 600
idempotency_key: nightly-2026-11-27
labels: {team: risk}
";

    #[test]
    fn yaml_round_trips_through_canonical_bytes() {
        let spec = Spec::from_yaml(SAMPLE).unwrap();
        assert_eq!(spec.limits.memory_mib, 256);
        assert_eq!(spec.limits.cpu_ms, Limits::default().cpu_ms, "defaults are filled in");
        let decoded = Spec::decode(&spec.canonical()).unwrap();
        assert_eq!(decoded, spec);
        assert_eq!(Spec::from_yaml(&spec.to_yaml()).unwrap(), spec);
    }

    #[test]
    fn bad_specs_are_refused() {
        let unknown = format!("{SAMPLE}colour: blue\n");
        assert!(matches!(Spec::from_yaml(&unknown), Err(SpecError::Yaml(e)) if e.contains("colour")));
        let no_digest =
            SAMPLE.replace("program: sha3-256:0000000000000000000000000000000000000000000000000000000000000001\n", "");
        assert!(matches!(Spec::from_yaml(&no_digest), Err(SpecError::Field { field: "program", .. })));
        let bad_digest = SAMPLE.replace(&format!("sha3-256:{}1", "0".repeat(63)), "sha3-256:zz");

        assert_ne!(bad_digest, SAMPLE);
        assert!(Spec::from_yaml(&bad_digest).is_err());
        assert!(Spec::from_yaml(&SAMPLE.replace("replicas: 3", "replicas: 0")).is_err());
        assert!(Spec::from_yaml(&SAMPLE.replace("data/rows.csv", "../etc/passwd")).is_err());
        assert!(Spec::from_yaml(&SAMPLE.replace("compute", "quantum")).is_err());
        let huge = format!("{SAMPLE}\n").replace("args: [--rows, '100']", &format!("args: ['{}']", "x".repeat(4000)));
        assert!(Spec::from_yaml(&huge).is_ok(), "a long argument within bounds is fine");
        let too_many: Vec<String> = (0..300).map(|i| format!("'{i}'")).collect();
        let many = SAMPLE.replace("[--rows, '100']", &format!("[{}]", too_many.join(",")));
        assert!(matches!(Spec::from_yaml(&many), Err(SpecError::Field { field: "args", .. })));
    }

    #[test]
    fn default_idempotency_key_names_the_spec() {
        let without = SAMPLE.replace("idempotency_key: nightly-2026-11-27\n", "");
        let a = Spec::from_yaml(&without).unwrap();
        let b = Spec::from_yaml(&without).unwrap();
        assert!(a.idempotency_key.starts_with("spec-"));
        assert_eq!(a.idempotency_key, b.idempotency_key);
        let other = Spec::from_yaml(&without.replace("replicas: 3", "replicas: 2")).unwrap();
        assert_ne!(a.idempotency_key, other.idempotency_key);
    }

    #[test]
    fn envelope_round_trip_and_id() {
        let spec = Spec::from_yaml(SAMPLE).unwrap();
        let key = KeyPair::generate(Algorithm::MlDsa65);
        let envelope = Envelope::sign(spec.canonical(), &key);
        let bytes = envelope.canonical();
        let decoded = Envelope::decode(&bytes).unwrap();
        assert_eq!(decoded, envelope);
        assert_eq!(decoded.id(), envelope.id());
        decoded.verify().unwrap();
        assert!(Envelope::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Envelope::decode(&longer).is_err());
    }
}
