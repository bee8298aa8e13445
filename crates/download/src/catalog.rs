//! The catalog of downloadable models, kept as data in `catalog.toml` and checked when parsed.

use std::collections::HashSet;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::source::{parse_sha256, Source};

const BUILTIN: &str = include_str!("../catalog.toml");

/// One downloadable model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    pub id: String,
    /// Shown to people.
    pub name: String,
    pub repo: String,
    pub file: String,
    pub revision: String,
    /// Bytes, as published; the server's figure is used during the download.
    pub size: u64,
    pub quantization: String,
    /// e.g. "3B", "360M".
    pub parameters: String,
    pub license: String,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub recommended: bool,
    pub description: String,
}

impl CatalogEntry {
    /// What the downloader needs to fetch and verify this entry.
    pub fn source(&self) -> Source {
        Source {
            repo: self.repo.clone(),
            file: self.file.clone(),
            revision: self.revision.clone(),
            sha256: self.sha256.clone(),
            size: Some(self.size),
        }
    }

    /// The name the file has once installed.
    pub fn local_name(&self) -> &str {
        self.file.rsplit('/').next().unwrap_or(&self.file)
    }
}

/// All entries, in the order the app shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    entries: Vec<CatalogEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    model: Vec<CatalogEntry>,
}

impl Catalog {
    /// The catalog shipped with the app.
    pub fn builtin() -> Catalog {
        // The embedded file is checked by this module's tests, so a failure here is a build mistake.
        Catalog::from_toml(BUILTIN).expect("the embedded catalog.toml is valid")
    }

    /// Parses and checks a catalog: unique ids and file names, well-formed checksums, exactly one
    /// recommended entry.
    pub fn from_toml(text: &str) -> Result<Catalog> {
        let file: CatalogFile = toml::from_str(text).map_err(|e| Error::Catalog(e.to_string()))?;
        let mut entries = file.model;
        let mut ids = HashSet::new();
        let mut files = HashSet::new();
        for e in &mut entries {
            if !ids.insert(e.id.clone()) {
                return Err(Error::Catalog(format!("id {:?} appears twice", e.id)));
            }
            if !files.insert(e.local_name().to_string()) {
                return Err(Error::Catalog(format!("file {:?} appears twice", e.file)));
            }
            if let Some(sha) = &e.sha256 {
                e.sha256 = Some(parse_sha256(sha)?);
            }
            if e.size == 0 {
                return Err(Error::Catalog(format!("{}: size must be set", e.id)));
            }
        }
        let recommended = entries.iter().filter(|e| e.recommended).count();
        if recommended != 1 {
            return Err(Error::Catalog(format!(
                "exactly one entry must be recommended, found {recommended}"
            )));
        }
        Ok(Catalog { entries })
    }

    pub fn entries(&self) -> &[CatalogEntry] {
        &self.entries
    }

    /// The default model for first-run onboarding.
    pub fn recommended(&self) -> &CatalogEntry {
        self.entries
            .iter()
            .find(|e| e.recommended)
            .expect("from_toml guarantees one recommended entry")
    }

    pub fn get(&self, id: &str) -> Result<&CatalogEntry> {
        self.entries
            .iter()
            .find(|e| e.id == id)
            .ok_or_else(|| Error::UnknownCatalogId {
                id: id.to_string(),
                known: self
                    .entries
                    .iter()
                    .map(|e| e.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The entry whose file an installed model is, matched by file name.
    pub fn by_file_name(&self, name: &str) -> Option<&CatalogEntry> {
        self.entries.iter().find(|e| e.local_name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_with_one_recommended_entry() {
        let c = Catalog::from_toml(BUILTIN).unwrap();
        assert!(c.entries().len() >= 5);
        assert_eq!(c.entries().iter().filter(|e| e.recommended).count(), 1);
        let rec = c.recommended();
        assert_eq!(rec.repo, "ggml-org/SmolLM3-3B-GGUF");
        assert_eq!(rec.quantization, "Q4_K_M");
    }

    #[test]
    fn builtin_catalog_offers_the_models_the_issue_asks_for() {
        let c = Catalog::builtin();
        let has = |params: &str, quant: &str| {
            c.entries()
                .iter()
                .any(|e| e.parameters == params && e.quantization == quant)
        };
        assert!(has("3B", "Q4_K_M") && has("3B", "Q8_0"));
        for params in ["135M", "360M", "1.7B"] {
            assert!(
                c.entries().iter().any(|e| e.parameters == params),
                "{params} missing"
            );
        }
        for e in c.entries() {
            assert!(e.file.ends_with(".gguf"), "{}", e.id);
            e.source().url(crate::DEFAULT_ENDPOINT).unwrap();
        }
    }

    #[test]
    fn lookup_by_id_and_file_name() {
        let c = Catalog::builtin();
        let e = c.get("smollm3-3b-q8_0").unwrap();
        assert_eq!(c.by_file_name(e.local_name()).unwrap().id, e.id);
        let err = c.get("nope").unwrap_err().to_string();
        assert!(err.contains("smollm3-3b-q4_k_m"), "{err}");
    }

    fn entry(id: &str, file: &str, recommended: bool) -> String {
        format!(
            "[[model]]\nid = \"{id}\"\nname = \"n\"\nrepo = \"a/b\"\nfile = \"{file}\"\nrevision = \"main\"\n\
             size = 1\nquantization = \"Q4_0\"\nparameters = \"1B\"\nlicense = \"MIT\"\n\
             recommended = {recommended}\ndescription = \"d\"\n"
        )
    }

    #[test]
    fn rejects_zero_or_two_recommended_entries() {
        let none = entry("a", "a.gguf", false) + &entry("b", "b.gguf", false);
        let two = entry("a", "a.gguf", true) + &entry("b", "b.gguf", true);
        assert!(Catalog::from_toml(&none).is_err());
        assert!(Catalog::from_toml(&two).is_err());
        let one = entry("a", "a.gguf", true) + &entry("b", "b.gguf", false);
        assert_eq!(Catalog::from_toml(&one).unwrap().recommended().id, "a");
    }

    #[test]
    fn rejects_duplicate_ids_and_files() {
        let ids = entry("a", "a.gguf", true) + &entry("a", "b.gguf", false);
        let files = entry("a", "a.gguf", true) + &entry("b", "a.gguf", false);
        assert!(Catalog::from_toml(&ids).is_err());
        assert!(Catalog::from_toml(&files).is_err());
    }
}
