//! The content store: blobs and manifests by digest, shared by every upstream and repository,
//! behind one interface ([`BlobStore`]) whichever backend keeps them: [`files`] (the local file
//! system) or an S3-compatible bucket ([`crate::cache::bucket`]: `blobs/<alg>/<2>/<hex>`,
//! written by multipart uploads completed only after verification). Downloads and uploads in progress are written to the local [`spool`] first; content
//! becomes visible in the store only once its digest is verified, so a reader never sees a
//! partial or unverified blob.

pub(crate) mod files;
pub(crate) mod read;
pub(crate) mod space;
pub(crate) mod spool;
mod stored;

use std::fs::File;
use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use futures_util::TryStreamExt as _;
use sha2::{Digest as _, Sha256};

use crate::cache::bucket::{Bucket, BucketError, keys};
use crate::reference::{Digest, Hasher};
use files::FileStore;
use spool::Spool;
pub(crate) use stored::StoredBytes;

/// The sha256 digest of `bytes`.
pub(crate) fn sha256(bytes: &[u8]) -> Digest {
    Digest::sha256_from_bytes(&Sha256::digest(bytes))
}

/// Where verified content lives, and the local spool in front of it.
#[derive(Debug)]
pub(crate) struct BlobStore {
    spool: Spool,
    content: Content,
}

#[derive(Debug)]
enum Content {
    Files(FileStore),
    Bucket {
        bucket: Bucket,
        /// Blob GETs may answer 307 to a presigned URL (not `storage.redirect.disable`).
        redirect: bool,
    },
}

/// A committed blob, ready to be read.
#[derive(Debug)]
pub(crate) enum Committed {
    File {
        file: File,
        size: u64,
    },
    /// An object in the bucket: streamed from it, or redirected to with `redirect`.
    Object {
        key: String,
        size: u64,
        redirect: bool,
    },
}

impl Committed {
    pub(crate) fn size(&self) -> u64 {
        match self {
            Committed::File { size, .. } | Committed::Object { size, .. } => *size,
        }
    }
}

/// Why the store could not read or keep content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The local file system (a full disk: ENOSPC, a failing one: EIO).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The bucket.
    #[error("{0}")]
    Bucket(#[from] BucketError),
    /// Content that does not hash to its digest is not stored.
    #[error("content does not match {0}")]
    Mismatch(Digest),
    /// An object longer than recorded.
    #[error("object {key} gave more than the {size} bytes recorded")]
    TooLong { key: String, size: u64 },
    /// An object shorter than recorded.
    #[error("object {key} gave {got} bytes, {size} recorded")]
    Short { key: String, got: u64, size: u64 },
    /// An object asked of a store on the local file system.
    #[error("not a bucket")]
    NotABucket,
    /// A file operation on the blocking pool did not finish (a panic).
    #[error("{0}")]
    Task(#[from] tokio::task::JoinError),
}

impl BlobStore {
    /// A store on the local file system under `root`: `blobs/` and the spool (`tmp/`, locked).
    pub(crate) fn open_files(root: &std::path::Path) -> io::Result<Self> {
        let spool = Spool::open(root)?;
        Ok(BlobStore {
            spool,
            content: Content::Files(FileStore::open(root)?),
        })
    }

    /// A store in a bucket, with its spool (locked) under the local `root`.
    pub(crate) fn open_bucket(
        root: &std::path::Path,
        bucket: Bucket,
        redirect: bool,
    ) -> io::Result<Self> {
        Ok(BlobStore {
            spool: Spool::open(root)?,
            content: Content::Bucket { bucket, redirect },
        })
    }

    /// The bucket, when the store is one.
    pub(crate) fn bucket(&self) -> Option<&Bucket> {
        match &self.content {
            Content::Files(_) => None,
            Content::Bucket { bucket, .. } => Some(bucket),
        }
    }

    /// A fresh spool path for content in progress.
    pub(crate) fn temp_path(&self) -> PathBuf {
        self.spool.temp_path()
    }

    /// A committed blob, or `None`.
    pub(crate) async fn open(&self, digest: &Digest) -> Result<Option<Committed>, StoreError> {
        match &self.content {
            Content::Files(files) => match files.open_blob(digest) {
                Ok(file) => {
                    let size = file.metadata()?.len();
                    Ok(Some(Committed::File { file, size }))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            Content::Bucket { bucket, redirect } => {
                let key = keys::blob(digest);
                Ok(bucket.head(&key).await?.map(|size| Committed::Object {
                    key,
                    size,
                    redirect: *redirect,
                }))
            }
        }
    }

    /// Bytes `start..end` of a committed object, as they arrive from the bucket.
    pub(crate) async fn stream_object(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<futures_util::stream::BoxStream<'static, io::Result<Bytes>>, StoreError> {
        match &self.content {
            Content::Bucket { bucket, .. } => Ok(bucket.stream(key, start, end).await?),
            Content::Files(_) => Err(StoreError::NotABucket),
        }
    }

    /// A committed object whole, which must be `size` bytes long (what [`open`](Self::open)
    /// saw): for small blobs, read at once into the blob memo.
    pub(crate) async fn read_object(&self, key: &str, size: u64) -> Result<Bytes, StoreError> {
        match &self.content {
            Content::Bucket { bucket, .. } => {
                // A ranged GET: never more than `size` bytes in memory, whatever the object.
                let mut body = bucket.stream(key, 0, size).await?;
                let mut whole = bytes::BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
                while let Some(chunk) = body.try_next().await? {
                    if (whole.len() + chunk.len()) as u64 > size {
                        return Err(StoreError::TooLong {
                            key: key.to_owned(),
                            size,
                        });
                    }
                    whole.extend_from_slice(&chunk);
                }
                if whole.len() as u64 != size {
                    return Err(StoreError::Short {
                        key: key.to_owned(),
                        got: whole.len() as u64,
                        size,
                    });
                }
                Ok(whole.freeze())
            }
            Content::Files(_) => Err(StoreError::NotABucket),
        }
    }

    /// A presigned URL of a committed object.
    pub(crate) async fn presigned(&self, key: &str) -> Result<url::Url, StoreError> {
        match &self.content {
            Content::Bucket { bucket, .. } => Ok(bucket.presigned(key).await?),
            Content::Files(_) => Err(StoreError::NotABucket),
        }
    }

    /// The size of a committed blob, or `None`.
    pub(crate) async fn size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        Ok(self.open(digest).await?.map(|c| c.size()))
    }

    /// Makes a verified spool file visible under `digest` (the spool file goes).
    pub(crate) async fn commit(&self, temp: PathBuf, digest: &Digest) -> Result<(), StoreError> {
        match &self.content {
            Content::Files(files) => {
                let path = files.path(digest);
                Ok(tokio::task::spawn_blocking(move || files::commit(&temp, &path)).await??)
            }
            Content::Bucket { bucket, .. } => {
                let uploaded = bucket.upload_file(&keys::blob(digest), &temp).await;
                let _ = tokio::fs::remove_file(&temp).await;
                Ok(uploaded?)
            }
        }
    }

    /// Stores small content (a manifest) after checking it hashes to `digest`.
    pub(crate) async fn put_verified(
        &self,
        digest: &Digest,
        bytes: Bytes,
    ) -> Result<(), StoreError> {
        if Hasher::digest(digest, &bytes) != *digest {
            return Err(StoreError::Mismatch(digest.clone()));
        }
        match &self.content {
            Content::Files(files) => {
                let (temp, path) = (self.temp_path(), files.path(digest));
                Ok(tokio::task::spawn_blocking(move || files::put(&temp, &path, &bytes)).await??)
            }
            Content::Bucket { bucket, .. } => Ok(bucket.put(&keys::blob(digest), bytes).await?),
        }
    }

    /// Small content (a manifest) whole, or `None`.
    pub(crate) async fn read(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        match &self.content {
            Content::Files(files) => match tokio::fs::read(files.path(digest)).await {
                Ok(bytes) => Ok(Some(Bytes::from(bytes))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
            Content::Bucket { bucket, .. } => Ok(bucket.get(&keys::blob(digest)).await?),
        }
    }

    /// Deletes committed content (eviction); content already gone is not an error.
    pub(crate) async fn delete(&self, digest: &Digest) -> Result<(), StoreError> {
        match &self.content {
            Content::Files(files) => match tokio::fs::remove_file(files.path(digest)).await {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
                _ => Ok(()),
            },
            Content::Bucket { bucket, .. } => Ok(bucket.delete(&keys::blob(digest)).await?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn put_verified_refuses_wrong_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open_files(dir.path()).unwrap();
        let digest = sha256(b"hello");
        assert!(
            store
                .put_verified(&digest, Bytes::from_static(b"hellO"))
                .await
                .is_err()
        );
        assert_eq!(store.size(&digest).await.unwrap(), None);
        store
            .put_verified(&digest, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(store.read(&digest).await.unwrap().unwrap(), &b"hello"[..]);
        assert!(
            dir.path()
                .join("blobs/sha256")
                .join(&digest.hex()[..2])
                .join(digest.hex())
                .exists()
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        store.delete(&digest).await.unwrap();
        store.delete(&digest).await.unwrap();
        assert_eq!(store.read(&digest).await.unwrap(), None);
    }
}
