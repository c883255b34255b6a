//! Post-quantum keys and signatures, each carrying its algorithm tag.
//!
//! Two algorithms: `ml-dsa-65` (FIPS 204, the default) and `dilithium3`
//! (the round-3 draft that FIPS 204 was derived from, through
//! `pqcrypto-dilithium`). They are different algorithms with equal key sizes,
//! so a key or signature without its tag would be ambiguous: the tag travels
//! with every key and signature, and only the tagged algorithm verifies.
//!
//! Key files are JSON: `{"alg": ..., "public": hex}` for a public key, plus
//! `"secret": hex` for a key pair (written with mode 0600).

use std::fmt;
use std::io::Write;
use std::path::Path;

use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _, SecretKey as _};
use serde::{Deserialize, Serialize};
use sha3::{Digest as _, Sha3_256};
use zeroize::Zeroizing;

use crate::canonical::{DecodeError, Reader, Writer};

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ML-DSA-65, FIPS 204.
    #[serde(rename = "ml-dsa-65")]
    MlDsa65,
    /// Dilithium3, round-3 draft (`pqcrypto-dilithium`).
    #[serde(rename = "dilithium3")]
    Dilithium3,
}

impl Algorithm {
    /// Every supported algorithm.
    pub const ALL: [Algorithm; 2] = [Algorithm::MlDsa65, Algorithm::Dilithium3];

    /// The tag as users write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::MlDsa65 => "ml-dsa-65",
            Self::Dilithium3 => "dilithium3",
        }
    }

    /// The tag's byte in canonical encodings.
    pub fn code(self) -> u8 {
        match self {
            Self::MlDsa65 => 1,
            Self::Dilithium3 => 2,
        }
    }

    /// The algorithm a canonical tag byte names.
    pub fn from_code(code: u8) -> Result<Self, CryptoError> {
        Self::ALL.into_iter().find(|alg| alg.code() == code).ok_or(CryptoError::UnknownAlgorithm(code.to_string()))
    }

    /// Public key length, in bytes.
    pub fn public_key_bytes(self) -> usize {
        match self {
            Self::MlDsa65 => pqcrypto_mldsa::mldsa65::public_key_bytes(),
            Self::Dilithium3 => pqcrypto_dilithium::dilithium3::public_key_bytes(),
        }
    }

    /// Secret key length, in bytes.
    pub fn secret_key_bytes(self) -> usize {
        match self {
            Self::MlDsa65 => pqcrypto_mldsa::mldsa65::secret_key_bytes(),
            Self::Dilithium3 => pqcrypto_dilithium::dilithium3::secret_key_bytes(),
        }
    }

    /// Signature length, in bytes.
    pub fn signature_bytes(self) -> usize {
        match self {
            Self::MlDsa65 => pqcrypto_mldsa::mldsa65::signature_bytes(),
            Self::Dilithium3 => pqcrypto_dilithium::dilithium3::signature_bytes(),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Algorithm {
    type Err = CryptoError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::ALL.into_iter().find(|alg| alg.name() == name).ok_or_else(|| CryptoError::UnknownAlgorithm(name.into()))
    }
}

/// Why a key or signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The tag names no supported algorithm.
    #[error("unknown signature algorithm {0:?} (supported: ml-dsa-65, dilithium3)")]
    UnknownAlgorithm(String),
    /// A key or signature of the wrong size for its algorithm.
    #[error("{what} for {alg} must be {expected} bytes, got {found}")]
    Length {
        /// Key or signature.
        what: &'static str,
        /// Its algorithm.
        alg: Algorithm,
        /// Required length.
        expected: usize,
        /// Given length.
        found: usize,
    },
    /// The signature's algorithm differs from the key's.
    #[error("signature is tagged {signature} but the key is {key}")]
    AlgorithmMismatch {
        /// The key's algorithm.
        key: Algorithm,
        /// The signature's algorithm.
        signature: Algorithm,
    },
    /// The signature does not verify.
    #[error("signature does not verify under {alg} key {fingerprint}")]
    BadSignature {
        /// The algorithm used.
        alg: Algorithm,
        /// The key's fingerprint.
        fingerprint: Fingerprint,
    },
}

/// SHA3-256 of a key's canonical encoding (tag and bytes): names the key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parse 64 hex characters.
    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim()).map_err(|e| format!("fingerprint {text:?} is not hex: {e}"))?;
        bytes.try_into().map(Self).map_err(|_| format!("fingerprint {text:?} is not 32 bytes (64 hex characters)"))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

/// How keys and signatures appear in JSON (and bincode): the tag and the
/// bytes in hex; reading checks the length for the tag.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tagged {
    alg: Algorithm,
    hex: String,
}

fn untag(tagged: Tagged) -> Result<(Algorithm, Vec<u8>), CryptoError> {
    let bytes = hex::decode(&tagged.hex).map_err(|_| CryptoError::Length {
        what: "hex value",
        alg: tagged.alg,
        expected: 0,
        found: tagged.hex.len(),
    })?;
    Ok((tagged.alg, bytes))
}

impl TryFrom<Tagged> for PublicKey {
    type Error = CryptoError;

    fn try_from(tagged: Tagged) -> Result<Self, Self::Error> {
        let (alg, bytes) = untag(tagged)?;
        Self::new(alg, bytes)
    }
}

impl From<PublicKey> for Tagged {
    fn from(key: PublicKey) -> Self {
        Self { alg: key.alg, hex: hex::encode(key.bytes) }
    }
}

impl TryFrom<Tagged> for Signature {
    type Error = CryptoError;

    fn try_from(tagged: Tagged) -> Result<Self, Self::Error> {
        let (alg, bytes) = untag(tagged)?;
        Self::new(alg, bytes)
    }
}

impl From<Signature> for Tagged {
    fn from(signature: Signature) -> Self {
        Self { alg: signature.alg, hex: hex::encode(signature.bytes) }
    }
}

/// A public key with its algorithm.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Tagged", into = "Tagged")]
pub struct PublicKey {
    alg: Algorithm,
    bytes: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({}, {:?})", self.alg, self.fingerprint())
    }
}

fn check_length(what: &'static str, alg: Algorithm, expected: usize, found: usize) -> Result<(), CryptoError> {
    if expected == found {
        Ok(())
    } else {
        Err(CryptoError::Length { what, alg, expected, found })
    }
}

/// Read a tag byte and length-prefixed bytes, and build `what` from them
/// with `new` (which checks the length for the tag).
fn decode_tagged<T>(
    reader: &mut Reader<'_>,
    what: &'static str,
    new: fn(Algorithm, Vec<u8>) -> Result<T, CryptoError>,
) -> Result<T, DecodeError> {
    let alg = Algorithm::from_code(reader.u8(what)?).map_err(|e| DecodeError::invalid(what, e.to_string()))?;
    let bytes = reader.bytes(what)?.to_vec();
    new(alg, bytes).map_err(|e| DecodeError::invalid(what, e.to_string()))
}

impl PublicKey {
    /// A key from its algorithm and raw bytes (length checked).
    pub fn new(alg: Algorithm, bytes: Vec<u8>) -> Result<Self, CryptoError> {
        check_length("public key", alg, alg.public_key_bytes(), bytes.len())?;
        Ok(Self { alg, bytes })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Append the canonical form: tag byte, length-prefixed key.
    pub fn encode(&self, writer: &mut Writer) {
        writer.u8(self.alg.code()).bytes(&self.bytes);
    }

    /// Read the canonical form.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        decode_tagged(reader, "public key", Self::new)
    }

    /// The key's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut writer = Writer::with_prefix("docklock-key-v1");
        self.encode(&mut writer);
        Fingerprint(Sha3_256::digest(writer.finish()).into())
    }

    /// Check `signature` over `message`; only this key's algorithm verifies.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), CryptoError> {
        if signature.alg != self.alg {
            return Err(CryptoError::AlgorithmMismatch { key: self.alg, signature: signature.alg });
        }
        let bad = || CryptoError::BadSignature { alg: self.alg, fingerprint: self.fingerprint() };
        // Lengths were checked at construction, so from_bytes cannot fail;
        // map it to a refusal anyway rather than trusting that.
        let verified = match self.alg {
            Algorithm::MlDsa65 => {
                use pqcrypto_mldsa::mldsa65 as alg;
                let key = alg::PublicKey::from_bytes(&self.bytes).map_err(|_| bad())?;
                let sig = alg::DetachedSignature::from_bytes(&signature.bytes).map_err(|_| bad())?;
                alg::verify_detached_signature(&sig, message, &key).is_ok()
            }
            Algorithm::Dilithium3 => {
                use pqcrypto_dilithium::dilithium3 as alg;
                let key = alg::PublicKey::from_bytes(&self.bytes).map_err(|_| bad())?;
                let sig = alg::DetachedSignature::from_bytes(&signature.bytes).map_err(|_| bad())?;
                alg::verify_detached_signature(&sig, message, &key).is_ok()
            }
        };
        if verified {
            Ok(())
        } else {
            Err(bad())
        }
    }
}

/// A detached signature with its algorithm.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Tagged", into = "Tagged")]
pub struct Signature {
    alg: Algorithm,
    bytes: Vec<u8>,
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}, {} bytes)", self.alg, self.bytes.len())
    }
}

impl Signature {
    /// A signature from its algorithm and raw bytes (length checked).
    pub fn new(alg: Algorithm, bytes: Vec<u8>) -> Result<Self, CryptoError> {
        check_length("signature", alg, alg.signature_bytes(), bytes.len())?;
        Ok(Self { alg, bytes })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The raw signature bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Append the canonical form: tag byte, length-prefixed signature.
    pub fn encode(&self, writer: &mut Writer) {
        writer.u8(self.alg.code()).bytes(&self.bytes);
    }

    /// Read the canonical form.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, DecodeError> {
        decode_tagged(reader, "signature", Self::new)
    }
}

/// A key pair. The secret bytes are wiped from memory on drop.
pub struct KeyPair {
    public: PublicKey,
    secret: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyPair({:?})", self.public)
    }
}

/// Errors reading or writing key files.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file exists and would be overwritten.
    #[error("{0} exists; refusing to overwrite a key file")]
    Exists(String),
    /// The file is not a key file.
    #[error("{path} is not a DockLock key file: {reason}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    alg: Algorithm,
    public: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl KeyPair {
    /// A fresh key pair from the operating system's randomness.
    pub fn generate(alg: Algorithm) -> Self {
        let (public, secret) = match alg {
            Algorithm::MlDsa65 => {
                let (public, secret) = pqcrypto_mldsa::mldsa65::keypair();
                (public.as_bytes().to_vec(), secret.as_bytes().to_vec())
            }
            Algorithm::Dilithium3 => {
                let (public, secret) = pqcrypto_dilithium::dilithium3::keypair();
                (public.as_bytes().to_vec(), secret.as_bytes().to_vec())
            }
        };
        Self { public: PublicKey { alg, bytes: public }, secret: Zeroizing::new(secret) }
    }

    /// A key pair from its parts; the lengths are checked.
    pub fn from_parts(public: PublicKey, secret: Vec<u8>) -> Result<Self, CryptoError> {
        let secret = Zeroizing::new(secret);
        check_length("secret key", public.alg, public.alg.secret_key_bytes(), secret.len())?;
        Ok(Self { public, secret })
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// A value only this key's holder can compute, the same each time for
    /// one `context` (which starts with its own domain prefix): SHA3-256
    /// over a domain tag, the secret key and `context`. Nothing about the
    /// key follows from it.
    pub fn derive_secret(&self, context: &[u8]) -> [u8; 32] {
        let mut hasher = Sha3_256::new();
        hasher.update(b"docklock derived secret v1\0");
        hasher.update((self.secret.len() as u64).to_le_bytes());
        hasher.update(self.secret.as_slice());
        hasher.update(context);
        hasher.finalize().into()
    }

    /// Sign `message` (a canonical encoding with its domain prefix).
    pub fn sign(&self, message: &[u8]) -> Signature {
        let alg = self.public.alg;
        let bytes = match alg {
            Algorithm::MlDsa65 => {
                use pqcrypto_mldsa::mldsa65 as imp;
                let secret = imp::SecretKey::from_bytes(&self.secret).expect("secret key length checked");
                imp::detached_sign(message, &secret).as_bytes().to_vec()
            }
            Algorithm::Dilithium3 => {
                use pqcrypto_dilithium::dilithium3 as imp;
                let secret = imp::SecretKey::from_bytes(&self.secret).expect("secret key length checked");
                imp::detached_sign(message, &secret).as_bytes().to_vec()
            }
        };
        Signature { alg, bytes }
    }

    /// Write the key pair to a new file with mode 0600; an existing file is
    /// never overwritten.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let file = KeyFile {
            alg: self.public.alg,
            public: hex::encode(&self.public.bytes),
            secret: Some(hex::encode(&*self.secret)),
        };
        let text = Zeroizing::new(serde_json::to_string_pretty(&file).expect("key file encodes") + "\n");
        write_new_file(path, text.as_bytes(), 0o600)
    }

    /// Read a key pair file.
    pub fn read(path: &Path) -> Result<Self, KeyFileError> {
        let (public, secret) = read_key_file(path)?;
        let format = |reason: String| KeyFileError::Format { path: path.display().to_string(), reason };
        let secret = secret.ok_or_else(|| format("holds no secret key (is it a public key file?)".into()))?;
        let secret = Zeroizing::new(hex::decode(&*secret).map_err(|e| format(format!("secret is not hex: {e}")))?);
        Self::from_parts(public, secret.to_vec()).map_err(|e| format(e.to_string()))
    }
}

impl PublicKey {
    /// Write the public key to a new file (mode 0644).
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let file = KeyFile { alg: self.alg, public: hex::encode(&self.bytes), secret: None };
        let text = serde_json::to_string_pretty(&file).expect("key file encodes") + "\n";
        write_new_file(path, text.as_bytes(), 0o644)
    }

    /// Read the public key from a public key file or a key pair file.
    pub fn read(path: &Path) -> Result<Self, KeyFileError> {
        read_key_file(path).map(|(public, _)| public)
    }
}

/// Largest key file read (an ML-DSA-65 key pair in hex is about 12 KiB).
const KEY_FILE_BYTES_MAX: u64 = 64 * 1024;

fn read_key_file(path: &Path) -> Result<(PublicKey, Option<Zeroizing<String>>), KeyFileError> {
    let shown = path.display().to_string();
    let io = |source| KeyFileError::Io { path: shown.clone(), source };
    let format = |reason: String| KeyFileError::Format { path: shown.clone(), reason };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > KEY_FILE_BYTES_MAX {
        return Err(format(format!("{size} bytes, more than any key file")));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
    let file: KeyFile = serde_json::from_str(&text).map_err(|e| format(e.to_string()))?;
    let bytes = hex::decode(&file.public).map_err(|e| format(format!("public key is not hex: {e}")))?;
    let public = PublicKey::new(file.alg, bytes).map_err(|e| format(e.to_string()))?;
    Ok((public, file.secret.map(Zeroizing::new)))
}

fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyFileError> {
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display().to_string();
    let mut file =
        std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists(shown.clone())
            } else {
                KeyFileError::Io { path: shown.clone(), source }
            }
        })?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(|source| KeyFileError::Io { path: shown, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secrets_depend_on_the_key_and_the_context() {
        let (one, other) = (KeyPair::generate(Algorithm::MlDsa65), KeyPair::generate(Algorithm::MlDsa65));
        assert_eq!(one.derive_secret(b"a"), one.derive_secret(b"a"));
        assert_ne!(one.derive_secret(b"a"), one.derive_secret(b"b"));
        assert_ne!(one.derive_secret(b"a"), other.derive_secret(b"a"));
        // The same key read back from its parts derives the same values.
        let again = KeyPair::from_parts(one.public().clone(), one.secret.to_vec()).unwrap();
        assert_eq!(again.derive_secret(b"a"), one.derive_secret(b"a"));
    }

    #[test]
    fn sign_and_verify_each_algorithm() {
        for alg in Algorithm::ALL {
            let pair = KeyPair::generate(alg);
            let signature = pair.sign(b"message");
            assert_eq!(signature.as_bytes().len(), alg.signature_bytes());
            pair.public().verify(b"message", &signature).unwrap();
            assert!(matches!(pair.public().verify(b"messagf", &signature), Err(CryptoError::BadSignature { .. })));
            let mut flipped = signature.clone();
            flipped.bytes[10] ^= 1;
            assert!(pair.public().verify(b"message", &flipped).is_err());
        }
    }

    /// The tag decides the verifier: the same bytes under the other tag are
    /// refused, even though the lengths match.
    #[test]
    fn tags_are_not_interchangeable() {
        let mldsa = KeyPair::generate(Algorithm::MlDsa65);
        let signature = mldsa.sign(b"m");
        let relabelled = Signature { alg: Algorithm::Dilithium3, bytes: signature.bytes.clone() };
        assert!(matches!(mldsa.public().verify(b"m", &relabelled), Err(CryptoError::AlgorithmMismatch { .. })));
        let key_relabelled = PublicKey { alg: Algorithm::Dilithium3, bytes: mldsa.public().bytes.clone() };
        assert!(key_relabelled.verify(b"m", &relabelled).is_err());
        assert_ne!(key_relabelled.fingerprint(), mldsa.public().fingerprint());
    }

    #[test]
    fn lengths_are_checked() {
        assert!(matches!(Signature::new(Algorithm::MlDsa65, vec![0; 10]), Err(CryptoError::Length { .. })));
        assert!(PublicKey::new(Algorithm::Dilithium3, vec![0; 5]).is_err());
        let mut writer = Writer::default();
        writer.u8(9).bytes(&[0; 4]);
        assert!(PublicKey::decode(&mut Reader::new(&writer.finish())).is_err());
    }

    #[test]
    fn key_files_round_trip_and_never_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.key");
        let pair = KeyPair::generate(Algorithm::Dilithium3);
        pair.write_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(matches!(pair.write_new(&path), Err(KeyFileError::Exists(_))));
        let read = KeyPair::read(&path).unwrap();
        assert_eq!(read.public(), pair.public());
        read.public().verify(b"x", &pair.sign(b"x")).unwrap();
        let public_path = dir.path().join("admin.pub");
        pair.public().write_new(&public_path).unwrap();
        assert_eq!(&PublicKey::read(&public_path).unwrap(), pair.public());
        assert!(KeyPair::read(&public_path).is_err(), "a public key file is not a key pair");
    }
}
