//! A test certificate authority issuing X.509 v3 certificates (rustls refuses v1).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// The validity window of an issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// Valid from yesterday for ten years.
    Current,
    /// Valid only in 2020: expired.
    Expired,
}

/// A certificate and its private key, written as PEM files.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert: PathBuf,
    /// The private key, PEM (PKCS#8).
    pub key: PathBuf,
    /// Certificate followed by key in one file, the way the kubelet keeps
    /// `kubelet-client-current.pem`.
    pub combined: PathBuf,
}

/// The test CA: signs the API server's serving certificate and every client identity.
pub struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca_cert: PathBuf,
}

impl Pki {
    /// Creates a CA with its certificate at `DIR/ca.crt`.
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("create pki dir");
        let mut params = CertificateParams::new(Vec::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        set_validity(&mut params, Validity::Current);
        let key = KeyPair::generate().expect("generate CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        let ca_cert = dir.join("ca.crt");
        std::fs::write(&ca_cert, cert.pem()).expect("write CA cert");
        std::fs::write(dir.join("ca.key"), key.serialize_pem()).expect("write CA key");
        Self {
            dir: dir.to_owned(),
            issuer: Issuer::new(params, key),
            ca_cert,
        }
    }

    /// The CA certificate file.
    pub fn ca_cert(&self) -> &Path {
        &self.ca_cert
    }

    /// Issues a client certificate: `CN=common_name`, one `O=` per group (at most two). Kubernetes
    /// reads the user name from CN and the groups from O.
    pub fn client(
        &self,
        file_stem: &str,
        common_name: &str,
        groups: &[&str],
        validity: Validity,
    ) -> IssuedCert {
        let mut params = CertificateParams::new(Vec::new()).expect("client params");
        // rcgen keeps one value per attribute type (a second `O=` replaces the first), so the
        // second group goes in as the same OID under another name of rcgen's. Two are enough
        // for the tests; more would need another certificate tool.
        assert!(
            groups.len() <= 2,
            "a test certificate holds at most two groups, not {groups:?}"
        );
        let types = [
            DnType::OrganizationName,
            DnType::CustomDnType(vec![2, 5, 4, 10]),
        ];
        for (group, ty) in groups.iter().zip(types) {
            params.distinguished_name.push(ty, *group);
        }
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(file_stem, params, validity)
    }

    /// Issues a serving certificate for `127.0.0.1`, `localhost` and `extra_dns` names.
    pub fn server(&self, file_stem: &str, common_name: &str, extra_dns: &[&str]) -> IssuedCert {
        let mut names = vec!["localhost".to_owned()];
        names.extend(extra_dns.iter().map(|s| s.to_string()));
        let mut params = CertificateParams::new(names).expect("server params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(file_stem, params, Validity::Current)
    }

    fn issue(
        &self,
        file_stem: &str,
        mut params: CertificateParams,
        validity: Validity,
    ) -> IssuedCert {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        set_validity(&mut params, validity);
        let key = KeyPair::generate().expect("generate key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign cert");
        let issued = IssuedCert {
            cert: self.dir.join(format!("{file_stem}.crt")),
            key: self.dir.join(format!("{file_stem}.key")),
            combined: self.dir.join(format!("{file_stem}.pem")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        std::fs::write(
            &issued.combined,
            format!("{}{}", cert.pem(), key.serialize_pem()),
        )
        .expect("write combined pem");
        issued
    }

    /// Writes a fresh EC key pair for ServiceAccount token signing; returns the private and the
    /// public key file (kube-apiserver 1.20 reads only the public half from `--service-account-key-file`).
    pub fn signing_key(&self, file_stem: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("generate signing key");
        let private = self.dir.join(format!("{file_stem}.key"));
        let public = self.dir.join(format!("{file_stem}.pub"));
        std::fs::write(&private, key.serialize_pem()).expect("write signing key");
        std::fs::write(&public, key.public_key_pem()).expect("write public key");
        (private, public)
    }
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    match validity {
        Validity::Current => {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now - time::Duration::days(1);
            params.not_after = now + time::Duration::days(3650);
        }
        Validity::Expired => {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 12, 31);
        }
    }
}
