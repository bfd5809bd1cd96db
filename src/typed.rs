//! `TypedStore<K, V>`: keys and values as serde types, encoded with bincode 2.

use std::marker::PhantomData;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::options::Options;
use crate::store::{Stats, Store};

/// A store of serde types.
///
/// Keys and values are encoded with bincode 2's standard configuration
/// (variable-length integers, little-endian); two equal keys always encode to
/// the same bytes, so lookups work on the encoded form. The raw store stays
/// reachable through [`raw`](Self::raw).
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct User { name: String, age: u32 }
///
/// let dir = tempfile::tempdir()?;
/// let users: sfs::TypedStore<String, User> = sfs::TypedStore::open(dir.path().join("users.sfs"))?;
/// users.put(&"alice".to_string(), &User { name: "Alice".into(), age: 30 })?;
/// assert_eq!(users.get(&"alice".to_string())?.unwrap().age, 30);
/// assert!(users.delete(&"alice".to_string())?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedStore<K, V> {
    store: Store,
    _types: PhantomData<fn() -> (K, V)>,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

impl<K, V> TypedStore<K, V>
where
    K: Serialize + DeserializeOwned,
    V: Serialize + DeserializeOwned,
{
    /// Opens (or creates) a typed store with default options.
    pub fn open(path: impl AsRef<Path>) -> Result<TypedStore<K, V>> {
        Options::new().open_typed(path)
    }

    /// Wraps an open store.
    pub fn from_store(store: Store) -> TypedStore<K, V> {
        TypedStore {
            store,
            _types: PhantomData,
        }
    }

    fn encode<T: Serialize + ?Sized>(&self, what: &str, t: &T) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(t, config()).map_err(|e| Error::Codec {
            path: self.store.path().to_path_buf(),
            reason: format!("cannot encode the {what}: {e}"),
        })
    }

    fn decode<T: DeserializeOwned>(&self, what: &str, bytes: &[u8]) -> Result<T> {
        match bincode::serde::decode_from_slice(bytes, config()) {
            Ok((t, n)) if n == bytes.len() => Ok(t),
            Ok((_, n)) => Err(Error::Codec {
                path: self.store.path().to_path_buf(),
                reason: format!("cannot decode a {what}: {} trailing bytes", bytes.len() - n),
            }),
            Err(e) => Err(Error::Codec {
                path: self.store.path().to_path_buf(),
                reason: format!("cannot decode a {what}: {e}"),
            }),
        }
    }

    /// Inserts or overwrites.
    pub fn put(&self, key: &K, value: &V) -> Result<()> {
        self.store
            .put(self.encode("key", key)?, self.encode("value", value)?)
    }

    /// Inserts or overwrites, expiring `ttl` from now.
    pub fn put_with_ttl(&self, key: &K, value: &V, ttl: Duration) -> Result<()> {
        self.store
            .put_with_ttl(self.encode("key", key)?, self.encode("value", value)?, ttl)
    }

    /// Inserts or overwrites, expiring at `at`.
    pub fn put_with_expiry(&self, key: &K, value: &V, at: SystemTime) -> Result<()> {
        self.store
            .put_with_expiry(self.encode("key", key)?, self.encode("value", value)?, at)
    }

    /// The value of `key`, if present and not expired.
    pub fn get(&self, key: &K) -> Result<Option<V>> {
        match self.store.get(self.encode("key", key)?)? {
            Some(v) => Ok(Some(self.decode("value", &v)?)),
            None => Ok(None),
        }
    }

    /// Whether `key` is present and not expired.
    pub fn contains(&self, key: &K) -> bool {
        self.encode("key", key)
            .is_ok_and(|k| self.store.contains(k))
    }

    /// Removes `key`; returns whether it was present.
    pub fn delete(&self, key: &K) -> Result<bool> {
        self.store.delete(self.encode("key", key)?)
    }

    /// The live keys, decoded.
    pub fn keys(&self) -> Result<Vec<K>> {
        self.store
            .keys()
            .iter()
            .map(|k| self.decode("key", k))
            .collect()
    }

    /// Iterates over a snapshot of the keys with their values, decoded.
    pub fn iter(&self) -> impl Iterator<Item = Result<(K, V)>> + '_ {
        self.store.iter().map(move |r| {
            let (k, v) = r?;
            Ok((self.decode("key", &k)?, self.decode("value", &v)?))
        })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Numbers about the store.
    pub fn stats(&self) -> Stats {
        self.store.stats()
    }

    /// The underlying byte store.
    pub fn raw(&self) -> &Store {
        &self.store
    }

    /// Unwraps the byte store.
    pub fn into_raw(self) -> Store {
        self.store
    }

    /// Syncs and closes.
    pub fn close(self) -> Result<()> {
        self.store.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    struct Point {
        x: i64,
        tags: Vec<String>,
    }

    #[test]
    fn typed_round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.sfs");
        let s: TypedStore<(u32, String), Point> = TypedStore::open(&p).unwrap();
        let k = (7, "seven".to_string());
        let v = Point {
            x: -3,
            tags: vec!["a".into(), "b".into()],
        };
        s.put(&k, &v).unwrap();
        assert_eq!(s.get(&k).unwrap(), Some(v.clone()));
        assert!(s.contains(&k));
        assert_eq!(s.keys().unwrap(), vec![k.clone()]);
        s.close().unwrap();
        let s: TypedStore<(u32, String), Point> = TypedStore::open(&p).unwrap();
        assert_eq!(
            s.iter().collect::<Result<Vec<_>>>().unwrap(),
            vec![(k.clone(), v)]
        );
        assert!(s.delete(&k).unwrap());
        assert_eq!(s.get(&k).unwrap(), None);
    }

    #[test]
    fn undecodable_values_are_codec_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.sfs");
        let s: TypedStore<String, u64> = TypedStore::open(&p).unwrap();
        let key = bincode::serde::encode_to_vec("k", config()).unwrap();
        s.raw().put(&key, [0xFF, 0xFF, 0xFF, 0xFF, 0xFF]).unwrap();
        let e = s.get(&"k".to_string()).unwrap_err();
        assert!(matches!(e, Error::Codec { .. }), "{e}");
        assert!(e.to_string().contains("t.sfs"));
    }
}
