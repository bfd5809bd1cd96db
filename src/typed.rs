//! `TypedStore<K, V>`: keys and values as serde types, encoded with bincode 2,
//! over a [`Store`] of bytes. Every operation of the byte store that makes
//! sense on typed keys and values is here too (`tests/typed_parity.rs`
//! keeps it so); this module only encodes, decodes and words errors, and
//! never touches the file itself.

use std::any::type_name;
use std::borrow::Borrow;
use std::marker::PhantomData;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, describe_key};
use crate::options::Options;
use crate::store::{BackupOptions, BackupReport, CompactStats, PutOptions, Stats, Store, ValueRef};

/// A store of serde types.
///
/// Keys and values are encoded with bincode 2's standard configuration
/// (variable-length integers, little-endian) and kept in a byte [`Store`],
/// which stays reachable through [`raw`](Self::raw).
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, Debug, PartialEq)]
/// struct User { name: String, age: u32 }
///
/// let dir = tempfile::tempdir()?;
/// let users: sfs::TypedStore<String, User> = sfs::TypedStore::open(dir.path().join("users.sfs"))?;
/// users.put("alice", &User { name: "Alice".into(), age: 30 })?; // a &str for a String key
/// assert_eq!(users.get("alice")?.unwrap().age, 30);
/// assert_eq!(users.get(&"alice".to_string())?.unwrap().age, 30); // &K works too
/// assert!(users.delete("alice")?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # Keys are compared by their encoding
///
/// The store finds an entry by the bytes of its encoded key: **two keys are
/// the same entry if and only if they encode to the same bytes**. For most
/// key types (integers, `bool`, `char`, strings, byte vectors, tuples,
/// structs and enums of these, `Vec`, `Option`, `BTreeMap`, `BTreeSet`)
/// equal values encode equally, so `==` and "same entry" agree.
///
/// For some types they do not, and such types must not be used as keys as
/// they are (normalize them first, e.g. into a sorted `Vec` or the float's
/// bits with `-0.0` mapped to `0.0`):
/// - floats: `0.0 == -0.0`, but they encode differently, so they are two
///   entries; `NaN != NaN`, yet a given NaN encodes to fixed bytes and finds
///   its entry;
/// - `HashMap` and `HashSet`: they encode in iteration order, which differs
///   between two equal sets (and from run to run), so an equal key may miss;
/// - any type whose `Serialize` writes something its `Eq` ignores, or the
///   other way round.
///
/// # Borrowed lookups
///
/// Every method that takes a key accepts any `&Q` where `K: Borrow<Q>`, so a
/// `TypedStore<String, V>` is asked with a `&str` without allocating. The
/// key is found only if `Q` encodes exactly as `K` does. These pairs do, and
/// the crate's tests prove it:
///
/// | `K` | `Q` |
/// |---|---|
/// | `String` | `str` |
/// | `Vec<T>` | `[T]` (`Vec<u8>` and `[u8]` included) |
/// | `Box<T>` | `T` |
/// | `Cow<'_, T>` | `T` |
/// | `PathBuf` | `Path` |
/// | any `T` | `T` |
///
/// One pair that `Borrow` allows does **not**: `[T; N]` with `[T]` (an array
/// encodes without a length, a slice with one). Ask a `TypedStore<[u8; 4], V>`
/// with a `&[u8; 4]`, not a `&[u8]`.
///
/// Values take the same shortcut: [`put`](Self::put) accepts `&W` where
/// `V: Borrow<W>` (a `&str` for a `String` value), with the same pairs.
///
/// # The byte store underneath
///
/// [`raw`](Self::raw) gives the byte store, whose keys are the **encoded**
/// keys. `typed.raw().touch(&session_id, ttl)` compiles (a `&String` is
/// `AsRef<[u8]>`) but looks up the unencoded bytes and finds nothing. Use the
/// typed method, or encode the key first with
/// [`encode_key`](Self::encode_key):
///
/// ```
/// use std::time::Duration;
///
/// let dir = tempfile::tempdir()?;
/// let sessions: sfs::TypedStore<String, u64> = sfs::TypedStore::open(dir.path().join("s.sfs"))?;
/// sessions.put_with_ttl("sid-1", &42, Duration::from_secs(60))?;
/// assert!(!sessions.raw().contains("sid-1"));                     // the unencoded key: not there
/// let raw_key = sessions.encode_key("sid-1")?;
/// assert_eq!(raw_key, b"\x05sid-1");                               // bincode: length, then bytes
/// assert!(sessions.raw().touch(&raw_key, Duration::from_secs(60))?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedStore<K, V> {
    store: Store,
    _types: PhantomData<fn() -> (K, V)>,
}

/// An entry read with its metadata and expiry, from
/// [`TypedStore::get_entry`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct TypedEntry<V> {
    /// The value, decoded.
    pub value: V,
    /// The metadata (bytes, not encoded; empty when none was written).
    pub metadata: Vec<u8>,
    /// When the entry expires, if it does.
    pub expires_at: Option<SystemTime>,
}

/// A value borrowed from the store without copying, from
/// [`TypedStore::get_ref`]: its encoded bytes stay in the file's memory map,
/// reader-locked, until this is dropped (see [`ValueRef`]).
///
/// A typed value cannot be handed out by reference, since its bytes are its
/// encoding; what this saves is the copy. [`decode`](Self::decode) builds a
/// `V`, and [`decode_borrowed`](Self::decode_borrowed) builds a type that
/// borrows its strings and byte slices from the map, with no copy at all:
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Page { title: String, body: String }
/// #[derive(Deserialize)]
/// struct PageView<'a> { title: &'a str, body: &'a str }
///
/// let dir = tempfile::tempdir()?;
/// let pages: sfs::TypedStore<u32, Page> = sfs::TypedStore::open(dir.path().join("p.sfs"))?;
/// pages.put(&1, &Page { title: "Home".into(), body: "x".repeat(100_000) })?;
/// let r = pages.get_ref(&1)?.unwrap();
/// let view: PageView<'_> = r.decode_borrowed()?;   // no copy of the body
/// assert_eq!((view.title, view.body.len()), ("Home", 100_000));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedValueRef<'a, V> {
    bytes: ValueRef<'a>,
    key: Vec<u8>,
    path: &'a Path,
    _type: PhantomData<fn() -> V>,
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Decodes a `T` that fills `bytes`, or says what failed: `what` names the
/// thing decoded ("the value of key ..."), the message adds the Rust type.
fn decode_as<'de, T: Deserialize<'de>>(path: &Path, what: &str, bytes: &'de [u8]) -> Result<T> {
    let detail = match bincode::serde::borrow_decode_from_slice(bytes, config()) {
        Ok((t, n)) if n == bytes.len() => return Ok(t),
        Ok((_, n)) => format!(
            "{} of its {} bytes are left over after decoding",
            bytes.len() - n,
            bytes.len()
        ),
        Err(e) => e.to_string(),
    };
    Err(Error::Codec {
        path: path.to_path_buf(),
        reason: format!(
            "cannot decode {what} as `{}`: {detail}; it was written with another type, \
             or not through a TypedStore",
            type_name::<T>()
        ),
    })
}

/// Says of a [`Error::TooLarge`] from the byte store that the length is that
/// of the encoding.
fn encoded_limits(e: Error) -> Error {
    match e {
        Error::TooLarge {
            path,
            what,
            len,
            max,
        } => Error::TooLarge {
            path,
            what: match what {
                "key" => "encoded key",
                "value" => "encoded value",
                other => other,
            },
            len,
            max,
        },
        e => e,
    }
}

/// A conditional write of a [`TypedStore`] that did not happen: the key's
/// value was not the one expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypedConflict<V> {
    /// The key's value when the write looked (`None`: absent or expired).
    pub current: Option<V>,
}

impl<V: std::fmt::Debug> std::fmt::Display for TypedConflict<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.current {
            None => write!(f, "the key is absent, which was not expected"),
            Some(v) => write!(f, "the key holds {v:?}, not the value expected"),
        }
    }
}

impl<V: std::fmt::Debug> std::error::Error for TypedConflict<V> {}

/// A [`Batch`](crate::Batch) of a [`TypedStore`]: keys and values are
/// encoded as they are added; one that cannot be encoded makes
/// [`TypedStore::apply`] fail with [`Error::Codec`] before anything is
/// written.
///
/// ```
/// let dir = tempfile::tempdir()?;
/// let accounts: sfs::TypedStore<String, i64> = sfs::TypedStore::open(dir.path().join("a.sfs"))?;
/// accounts.put("alice", &100)?;
/// let mut transfer = sfs::TypedBatch::new();
/// transfer.put("alice", &70).put("bob", &30);
/// accounts.apply(&transfer)?; // both or neither, after a crash too
/// assert_eq!(accounts.get("bob")?, Some(30));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct TypedBatch<K, V> {
    raw: crate::Batch,
    /// The first encoding failure, reported by `apply`.
    error: Option<String>,
    _types: PhantomData<fn(K, V)>,
}

impl<K, V> Default for TypedBatch<K, V> {
    fn default() -> Self {
        TypedBatch {
            raw: crate::Batch::new(),
            error: None,
            _types: PhantomData,
        }
    }
}

impl<K, V> std::fmt::Debug for TypedBatch<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedBatch")
            .field("len", &self.raw.len())
            .field("error", &self.error)
            .finish()
    }
}

impl<K: Serialize, V: Serialize> TypedBatch<K, V> {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    fn encoded<T: Serialize + ?Sized>(&mut self, what: &str, t: &T) -> Option<Vec<u8>> {
        match bincode::serde::encode_to_vec(t, config()) {
            Ok(b) => Some(b),
            Err(e) => {
                self.error.get_or_insert_with(|| {
                    format!("cannot encode the {what} (a `{}`): {e}", type_name::<T>())
                });
                None
            }
        }
    }

    /// Puts `key` with the expiry and metadata of `opts`.
    pub fn put_with<Q, W>(&mut self, key: &Q, value: &W, opts: &PutOptions<'_>) -> &mut Self
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        if let (Some(k), Some(v)) = (self.encoded("key", key), self.encoded("value", value)) {
            self.raw.put_with(k, v, opts);
        }
        self
    }

    /// Puts `key`.
    pub fn put<Q, W>(&mut self, key: &Q, value: &W) -> &mut Self
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.put_with(key, value, &PutOptions::new())
    }

    /// Puts `key`, expiring `ttl` after the batch is applied.
    pub fn put_with_ttl<Q, W>(&mut self, key: &Q, value: &W, ttl: Duration) -> &mut Self
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.put_with(key, value, &PutOptions::new().ttl(ttl))
    }

    /// Deletes `key`.
    pub fn delete<Q>(&mut self, key: &Q) -> &mut Self
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        if let Some(k) = self.encoded("key", key) {
            self.raw.delete(k);
        }
        self
    }

    /// Renews the expiry of `key` to `ttl` after the batch is applied.
    pub fn touch<Q>(&mut self, key: &Q, ttl: Duration) -> &mut Self
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        if let Some(k) = self.encoded("key", key) {
            self.raw.touch(k, ttl);
        }
        self
    }

    /// Renews the expiry of `key` to `at`.
    pub fn touch_until<Q>(&mut self, key: &Q, at: SystemTime) -> &mut Self
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        if let Some(k) = self.encoded("key", key) {
            self.raw.touch_until(k, at);
        }
        self
    }

    /// Makes the batch durable when applied, whatever the store's sync
    /// policy: see [`Batch::durable`](crate::Batch::durable).
    pub fn durable(&mut self) -> &mut Self {
        self.raw.durable();
        self
    }

    /// How many operations were added.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    /// Whether no operation was added.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
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

    /// The bytes under which `key` is kept in the byte store
    /// ([`raw`](Self::raw)): its bincode encoding.
    ///
    /// See "The byte store underneath" above for an example.
    pub fn encode_key<Q>(&self, key: &Q) -> Result<Vec<u8>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.encode("key", key)
    }

    fn encode<T: Serialize + ?Sized>(&self, what: &str, t: &T) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(t, config()).map_err(|e| Error::Codec {
            path: self.store.path().to_path_buf(),
            reason: format!("cannot encode the {what} (a `{}`): {e}", type_name::<T>()),
        })
    }

    fn decode_value(&self, key: &[u8], bytes: &[u8]) -> Result<V> {
        let what = format!("the value of key {}", describe_key(key));
        decode_as(self.store.path(), &what, bytes)
    }

    /// The key whose encoding is `key`: the inverse of
    /// [`encode_key`](Self::encode_key), for keys met as bytes, such as
    /// those of the [`Event`](crate::Event)s of [`subscribe`](Self::subscribe).
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use sfs::{Event, ManualClock, Options, TypedStore};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let clock = Arc::new(ManualClock::new(0));
    /// let sessions: TypedStore<String, u64> =
    ///     Options::new().clock(clock.clone()).open_typed(dir.path().join("s.sfs"))?;
    /// let events = sessions.subscribe();
    /// sessions.put_with_ttl("alice", &7, Duration::from_secs(30))?;
    /// clock.advance(Duration::from_secs(31));
    /// sessions.purge_expired()?;
    /// let Some(Event::Expired { key, .. }) = events.try_recv() else { panic!() };
    /// assert_eq!(sessions.decode_key(&key)?, "alice");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decode_key(&self, key: &[u8]) -> Result<K> {
        let what = format!("the key {}", describe_key(key));
        decode_as(self.store.path(), &what, key)
    }

    /// Subscribes to what happens to keys (see [`Store::subscribe`]); the
    /// events carry encoded keys: [`decode_key`](Self::decode_key) gives
    /// them back as `K`.
    pub fn subscribe(&self) -> crate::Subscriber {
        self.store.subscribe()
    }

    /// [`subscribe`](Self::subscribe) with a queue of `capacity` items (see
    /// [`Store::subscribe_with_capacity`]).
    pub fn subscribe_with_capacity(&self, capacity: usize) -> crate::Subscriber {
        self.store.subscribe_with_capacity(capacity)
    }

    fn put_raw<Q, W>(&self, key: &Q, value: &W, opts: &PutOptions<'_>) -> Result<()>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        let (k, v) = (self.encode("key", key)?, self.encode("value", value)?);
        self.store.put_with(k, v, opts).map_err(encoded_limits)
    }

    /// Inserts or overwrites. The limits of [`Store::put`] apply to the
    /// encoded key and value ([`Error::TooLarge`] says "encoded key").
    pub fn put<Q, W>(&self, key: &Q, value: &W) -> Result<()>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.put_raw(key, value, &PutOptions::new())
    }

    /// Inserts or overwrites, expiring `ttl` from now.
    pub fn put_with_ttl<Q, W>(&self, key: &Q, value: &W, ttl: Duration) -> Result<()>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.put_raw(key, value, &PutOptions::new().ttl(ttl))
    }

    /// Inserts or overwrites, expiring at `at`. A time already past removes
    /// the key.
    pub fn put_with_expiry<Q, W>(&self, key: &Q, value: &W, at: SystemTime) -> Result<()>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.put_raw(key, value, &PutOptions::new().expires_at(at))
    }

    /// Inserts or overwrites with an expiry and metadata (the metadata is
    /// bytes, stored as given).
    ///
    /// ```
    /// use std::time::Duration;
    /// use sfs::PutOptions;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let docs: sfs::TypedStore<u64, String> = sfs::TypedStore::open(dir.path().join("d.sfs"))?;
    /// docs.put_with(&7, "hello", &PutOptions::new().metadata(b"etag=1").ttl(Duration::from_secs(60)))?;
    /// let e = docs.get_entry(&7)?.unwrap();
    /// assert_eq!((e.value.as_str(), &e.metadata[..]), ("hello", &b"etag=1"[..]));
    /// assert!(e.expires_at.is_some());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn put_with<Q, W>(&self, key: &Q, value: &W, opts: &PutOptions<'_>) -> Result<()>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.put_raw(key, value, opts)
    }

    /// The value of `key`, if present and not expired.
    ///
    /// A value that does not decode as `V` is [`Error::Codec`], naming the
    /// key and the type.
    pub fn get<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.encode("key", key)?;
        match self.store.get(&k)? {
            Some(v) => Ok(Some(self.decode_value(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// Like [`get`](Self::get), but does not count as a use in the
    /// least-recently-used order.
    pub fn peek<Q>(&self, key: &Q) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.encode("key", key)?;
        match self.store.peek(&k)? {
            Some(v) => Ok(Some(self.decode_value(&k, &v)?)),
            None => Ok(None),
        }
    }

    /// The value of `key` with its metadata and expiry.
    pub fn get_entry<Q>(&self, key: &Q) -> Result<Option<TypedEntry<V>>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.encode("key", key)?;
        match self.store.get_entry(&k)? {
            Some(e) => Ok(Some(TypedEntry {
                value: self.decode_value(&k, &e.value)?,
                metadata: e.metadata,
                expires_at: e.expires_at,
            })),
            None => Ok(None),
        }
    }

    /// The encoded value of `key` without copying it, to decode in place (see
    /// [`TypedValueRef`]). It holds a reader lock on the entry's block until
    /// dropped.
    pub fn get_ref<Q>(&self, key: &Q) -> Result<Option<TypedValueRef<'_, V>>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.encode("key", key)?;
        Ok(self.store.get_ref(&k)?.map(|bytes| TypedValueRef {
            bytes,
            key: k,
            path: self.store.path(),
            _type: PhantomData,
        }))
    }

    /// Whether `key` is present and not expired. A key that cannot be
    /// encoded is not present.
    pub fn contains<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.encode("key", key)
            .is_ok_and(|k| self.store.contains(k))
    }

    /// Writes `new` to `key` (`None` deletes it) only if its value is
    /// `expected` now (`None`: absent or expired); otherwise writes nothing
    /// and returns the current value, decoded, in [`TypedConflict`]. See
    /// [`Store::compare_and_swap`].
    ///
    /// Values are compared by their encodings: a type whose encoding is not
    /// canonical (a `HashMap` encodes in its iteration order) may differ
    /// from an equal value.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let owners = sfs::TypedStore::<String, u32>::open(dir.path().join("o.sfs"))?;
    /// assert!(owners.compare_and_swap("shard-1", None, Some(&7))?.is_ok());
    /// let lost = owners.compare_and_swap("shard-1", None, Some(&8))?;
    /// assert_eq!(lost.unwrap_err().current, Some(7));
    /// # Ok::<(), sfs::Error>(())
    /// ```
    pub fn compare_and_swap<Q, W>(
        &self,
        key: &Q,
        expected: Option<&W>,
        new: Option<&W>,
    ) -> Result<std::result::Result<(), TypedConflict<V>>>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.compare_and_swap_with(key, expected, new, &PutOptions::new())
    }

    /// [`compare_and_swap`](Self::compare_and_swap), writing `new` with the
    /// expiry and metadata of `opts`.
    pub fn compare_and_swap_with<Q, W>(
        &self,
        key: &Q,
        expected: Option<&W>,
        new: Option<&W>,
        opts: &PutOptions<'_>,
    ) -> Result<std::result::Result<(), TypedConflict<V>>>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        let k = self.encode("key", key)?;
        let expected = expected.map(|e| self.encode("value", e)).transpose()?;
        let new = new.map(|n| self.encode("value", n)).transpose()?;
        let done = self
            .store
            .compare_and_swap_with(&k, expected.as_deref(), new.as_deref(), opts)
            .map_err(encoded_limits)?;
        match done {
            Ok(()) => Ok(Ok(())),
            Err(c) => Ok(Err(TypedConflict {
                current: c.current.map(|v| self.decode_value(&k, &v)).transpose()?,
            })),
        }
    }

    /// Inserts `key` only if it is absent (or expired); otherwise returns the
    /// current value in [`TypedConflict`]. See [`Store::put_if_absent`].
    pub fn put_if_absent<Q, W>(
        &self,
        key: &Q,
        value: &W,
    ) -> Result<std::result::Result<(), TypedConflict<V>>>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.compare_and_swap(key, None, Some(value))
    }

    /// [`put_if_absent`](Self::put_if_absent) with a time to live.
    pub fn put_if_absent_with_ttl<Q, W>(
        &self,
        key: &Q,
        value: &W,
        ttl: Duration,
    ) -> Result<std::result::Result<(), TypedConflict<V>>>
    where
        K: Borrow<Q>,
        V: Borrow<W>,
        Q: Serialize + ?Sized,
        W: Serialize + ?Sized,
    {
        self.compare_and_swap_with(key, None, Some(value), &PutOptions::new().ttl(ttl))
    }

    /// Atomically replaces the value of `key` with `f(current)` and returns
    /// the new value; `f` may run more than once (see [`Store::update`]).
    /// A current value that does not decode is [`Error::Codec`], and nothing
    /// is written.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let hits = sfs::TypedStore::<String, u64>::open(dir.path().join("h.sfs"))?;
    /// hits.update("/index", |n| Some(n.unwrap_or(0) + 1))?;
    /// assert_eq!(hits.update("/index", |n| Some(n.unwrap_or(0) + 1))?, Some(2));
    /// # Ok::<(), sfs::Error>(())
    /// ```
    pub fn update<Q>(&self, key: &Q, mut f: impl FnMut(Option<V>) -> Option<V>) -> Result<Option<V>>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        let k = self.encode("key", key)?;
        let mut new_value = None;
        self.store
            .try_update(&k, |current| {
                let current = current.map(|v| self.decode_value(&k, v)).transpose()?;
                let new = f(current);
                let bytes = new.as_ref().map(|v| self.encode("value", v)).transpose()?;
                new_value = new;
                Ok(bytes)
            })
            .map_err(encoded_limits)?;
        Ok(new_value)
    }

    /// Applies a [`TypedBatch`]: see [`Store::apply`]. The limits apply to
    /// the encoded keys and values.
    pub fn apply(&self, batch: &TypedBatch<K, V>) -> Result<()> {
        if let Some(reason) = &batch.error {
            return Err(Error::Codec {
                path: self.store.path().to_path_buf(),
                reason: reason.clone(),
            });
        }
        self.store.apply(&batch.raw).map_err(encoded_limits)
    }

    /// Removes `key`; returns whether it was present (and not expired).
    pub fn delete<Q>(&self, key: &Q) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.store.delete(self.encode("key", key)?)
    }

    /// Renews the expiry of `key` to `ttl` from now; false if it is absent or
    /// already expired. See [`Store::touch`], whose cost it has: a full
    /// `fdatasync` under the default `SyncPolicy::Always`.
    ///
    /// ```
    /// use std::{sync::Arc, time::Duration};
    /// use sfs::{ManualClock, Options, SyncPolicy};
    ///
    /// let dir = tempfile::tempdir()?;
    /// let clock = Arc::new(ManualClock::new(0));
    /// let sessions = Options::new()
    ///     .clock(clock.clone())
    ///     .sync(SyncPolicy::Periodic(Duration::from_secs(1))) // renewals need no fdatasync each
    ///     .open_typed::<String, u64>(dir.path().join("sessions.sfs"))?;
    /// sessions.put_with_ttl("sid-1", &7, Duration::from_secs(30))?;
    /// clock.advance(Duration::from_secs(20));
    /// assert!(sessions.touch("sid-1", Duration::from_secs(30))?); // a request renews it
    /// clock.advance(Duration::from_secs(20));
    /// assert_eq!(sessions.get("sid-1")?, Some(7));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn touch<Q>(&self, key: &Q, ttl: Duration) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.store.touch(self.encode("key", key)?, ttl)
    }

    /// Renews the expiry of `key` to `at`; false if it is absent or already
    /// expired. Costs what [`touch`](Self::touch) costs.
    pub fn touch_until<Q>(&self, key: &Q, at: SystemTime) -> Result<bool>
    where
        K: Borrow<Q>,
        Q: Serialize + ?Sized,
    {
        self.store.touch_until(self.encode("key", key)?, at)
    }

    /// The live keys, decoded.
    pub fn keys(&self) -> Result<Vec<K>> {
        self.store
            .keys()
            .iter()
            .map(|k| self.decode_key(k))
            .collect()
    }

    /// Iterates over a snapshot of the keys with their values, decoded; each
    /// value is read when reached.
    pub fn iter(&self) -> impl Iterator<Item = Result<(K, V)>> + '_ {
        self.store.iter().map(move |r| {
            let (k, v) = r?;
            Ok((self.decode_key(&k)?, self.decode_value(&k, &v)?))
        })
    }

    /// Number of entries (as [`Store::len`] counts them).
    pub fn len(&self) -> usize {
        self.store.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// Removes expired entries and reclaims their space; returns how many.
    pub fn purge_expired(&self) -> Result<usize> {
        self.store.purge_expired()
    }

    /// Removes everything (see [`Store::clear`]).
    pub fn clear(&self) -> Result<()> {
        self.store.clear()
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<()> {
        self.store.sync()
    }

    /// Moves live entries into free space and shrinks the file (see
    /// [`Store::compact`]).
    pub fn compact(&self) -> Result<CompactStats> {
        self.store.compact()
    }

    /// Writes a compacted copy of the store to `path` while it serves (see
    /// [`Store::backup`]); the copy opens as a `TypedStore<K, V>` too.
    pub fn backup(&self, path: impl AsRef<Path>) -> Result<BackupReport> {
        self.store.backup(path)
    }

    /// [`backup`](Self::backup) with options (see [`Store::backup_with`]).
    pub fn backup_with(
        &self,
        path: impl AsRef<Path>,
        opts: &BackupOptions,
    ) -> Result<BackupReport> {
        self.store.backup_with(path, opts)
    }

    /// [`backup`](Self::backup) to any writer (see [`Store::backup_to`]).
    pub fn backup_to(
        &self,
        w: &mut dyn std::io::Write,
        opts: &BackupOptions,
    ) -> Result<BackupReport> {
        self.store.backup_to(w, opts)
    }

    /// Numbers about the store.
    pub fn stats(&self) -> Stats {
        self.store.stats()
    }

    /// The path of the store file.
    pub fn path(&self) -> &Path {
        self.store.path()
    }

    /// The underlying byte store. Its keys are the encoded keys: see "The
    /// byte store underneath" above, and [`encode_key`](Self::encode_key).
    pub fn raw(&self) -> &Store {
        &self.store
    }

    /// Unwraps the byte store.
    pub fn into_raw(self) -> Store {
        self.store
    }

    /// Syncs and closes; reports any error the final sync met.
    pub fn close(self) -> Result<()> {
        self.store.close()
    }

    /// Closes a shared store for writing (see [`Store::shutdown`]).
    pub fn shutdown(&self) -> Result<()> {
        self.store.shutdown()
    }
}

impl<K, V> std::fmt::Debug for TypedStore<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedStore")
            .field("key", &type_name::<K>())
            .field("value", &type_name::<V>())
            .field("store", &self.store)
            .finish()
    }
}

impl<'a, V: DeserializeOwned> TypedValueRef<'a, V> {
    /// The value's encoded bytes, as kept in the file.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Decodes the value.
    pub fn decode(&self) -> Result<V> {
        self.decode_borrowed()
    }

    /// Decodes the value as `T`, a type that may borrow strings and byte
    /// slices from the bytes in place (`&'b str`, `&'b [u8]` with
    /// `#[serde(borrow)]` where serde asks for it). `T` must encode as `V`
    /// does, field for field.
    pub fn decode_borrowed<'b, T: Deserialize<'b>>(&'b self) -> Result<T> {
        let what = format!("the value of key {}", describe_key(&self.key));
        decode_as(self.path, &what, &self.bytes)
    }
}

impl<V> std::fmt::Debug for TypedValueRef<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TypedValueRef")
            .field("value", &type_name::<V>())
            .field("encoded_len", &self.bytes.len())
            .finish()
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
    fn undecodable_values_are_codec_errors_naming_the_file_key_and_type() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.sfs");
        let s: TypedStore<String, u64> = TypedStore::open(&p).unwrap();
        let key = s.encode_key("sid-9").unwrap();
        // A u64 of one byte, then two bytes too many.
        s.raw().put(&key, [7, 0xAA, 0xBB]).unwrap();
        let e = s.get("sid-9").unwrap_err();
        assert!(matches!(e, Error::Codec { .. }), "{e}");
        let text = e.to_string();
        for part in [
            "t.sfs: cannot decode the value of key \"sid-9\" (bincode-encoded) as `u64`",
            "2 of its 3 bytes are left over after decoding",
            "written with another type",
        ] {
            assert!(text.contains(part), "{part:?} not in {text}");
        }
        // A value that is not a valid encoding at all.
        s.raw().put(&key, [0xFF]).unwrap();
        let text = s.peek("sid-9").unwrap_err().to_string();
        assert!(
            text.contains("key \"sid-9\" (bincode-encoded) as `u64`"),
            "{text}"
        );
    }

    #[test]
    fn undecodable_keys_name_the_key_in_hex_and_the_type() {
        let dir = tempfile::tempdir().unwrap();
        let s: TypedStore<u8, u8> = TypedStore::open(dir.path().join("t.sfs")).unwrap();
        s.raw().put([0x01, 0x02], [0x03]).unwrap();
        let text = s.keys().unwrap_err().to_string();
        assert!(
            text.contains("cannot decode the key 0x0102 (hex) as `u8`: 1 of its 2 bytes"),
            "{text}"
        );
    }

    #[test]
    fn too_large_says_the_length_is_of_the_encoding() {
        let dir = tempfile::tempdir().unwrap();
        let s: TypedStore<String, ()> = TypedStore::open(dir.path().join("t.sfs")).unwrap();
        let key = "k".repeat(70_000);
        let e = s.put(key.as_str(), &()).unwrap_err();
        assert!(matches!(e, Error::TooLarge { .. }), "{e}");
        let text = e.to_string();
        // 70,000 bytes after a 5-byte length (0xFC, then a u32).
        assert_eq!(s.encode_key(key.as_str()).unwrap().len(), 70_005);
        assert!(
            text.contains("encoded key of 70005 bytes is over the limit of 65535 bytes"),
            "{text}"
        );
        assert!(s.is_empty());
    }

    #[test]
    fn debug_names_the_types_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let s: TypedStore<String, Point> = TypedStore::open(dir.path().join("dbg.sfs")).unwrap();
        let d = format!("{s:?}");
        assert!(
            d.contains("alloc::string::String") && d.contains("Point"),
            "{d}"
        );
        assert!(d.contains("dbg.sfs"), "{d}");
    }
}
