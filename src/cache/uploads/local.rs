//! Uploads in progress in the local spool (a cache on the file system): the upload's bytes in a
//! spool file, its state in memory. A request that writes to an upload claims it (another at the
//! same time is refused); an upload no request touched for `limits.upload_lifetime` is abandoned
//! and its file deleted ([`Uploads::expire`], run periodically by the server); at most
//! `limits.max_uploads` are in progress.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Method;
use axum::http::request::Parts;
use axum::response::Response;

use super::{
    accepted, append, cancelled, finish_file, new_upload_id, out_of_order, progress, query,
    too_many, unsupported,
};
use crate::cache::App;
use crate::cache::routing::Route;
use crate::registry::{ErrorCode, RegistryError};

/// Uploads in progress, by id.
#[derive(Debug, Default)]
pub struct Uploads {
    active: Mutex<HashMap<String, Upload>>,
}

#[derive(Debug, Clone)]
struct Upload {
    repository: String,
    path: PathBuf,
    size: u64,
    /// When a request last finished with it.
    touched: Instant,
    /// A request is writing to it now.
    busy: bool,
}

impl Uploads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Upload>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A known, live upload of `repository`, marked busy when `claim` (for a request that writes
    /// to it: another one at the same time is refused).
    fn get(
        &self,
        id: &str,
        repository: &str,
        lifetime: Duration,
        claim: bool,
    ) -> Result<Upload, RegistryError> {
        let mut active = self.lock();
        let upload = active
            .get_mut(id)
            .filter(|u| u.repository == repository)
            .filter(|u| u.busy || u.touched.elapsed() < lifetime)
            .ok_or_else(|| {
                RegistryError::new(
                    ErrorCode::BlobUploadUnknown,
                    format!("upload {id} is not known (or was abandoned)"),
                )
            })?;
        if claim {
            if upload.busy {
                return Err(RegistryError::new(
                    ErrorCode::BlobUploadInvalid,
                    format!("upload {id} is being written by another request"),
                ));
            }
            upload.busy = true;
        }
        Ok(upload.clone())
    }

    /// Starts tracking a new upload, unless `max` are in progress.
    fn start(&self, id: &str, upload: Upload, max: usize) -> Result<(), RegistryError> {
        let mut active = self.lock();
        if active.len() >= max {
            return Err(too_many(max));
        }
        active.insert(id.to_owned(), upload);
        Ok(())
    }

    /// A request is done with the upload: its new size, or `None` when the upload ended.
    fn release(&self, id: &str, size: Option<u64>) {
        let mut active = self.lock();
        match size {
            Some(size) => {
                if let Some(upload) = active.get_mut(id) {
                    upload.size = size;
                    upload.busy = false;
                    upload.touched = Instant::now();
                }
            }
            None => {
                active.remove(id);
            }
        }
    }

    /// Abandons uploads no request touched for `lifetime`, deleting their files. Returns how
    /// many went.
    pub fn expire(&self, lifetime: Duration) -> usize {
        let expired: Vec<Upload> = {
            let mut active = self.lock();
            let ids: Vec<String> = active
                .iter()
                .filter(|(_, u)| !u.busy && u.touched.elapsed() >= lifetime)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| active.remove(id)).collect()
        };
        for upload in &expired {
            let _ = std::fs::remove_file(&upload.path);
        }
        expired.len()
    }
}

/// Appends `body` to an upload a request claimed, then releases it; an upload whose body
/// failed is abandoned (its file deleted).
async fn append_claimed(
    app: &App,
    id: &str,
    upload: &Upload,
    body: Body,
) -> Result<u64, RegistryError> {
    match append(app, &upload.path, upload.size, body).await {
        Ok(size) => Ok(size),
        Err(error) => {
            app.uploads.release(id, None);
            let _ = std::fs::remove_file(&upload.path);
            Err(error)
        }
    }
}

/// The upload API on the local spool: POST (start, or monolithic), PATCH, PUT, GET, DELETE.
pub async fn upload(
    app: &App,
    route: &Route,
    name: &str,
    id: Option<&str>,
    parts: &Parts,
    body: Body,
) -> Result<Response, RegistryError> {
    let lifetime = app.limits.upload_lifetime;
    match (&parts.method, id) {
        (&Method::POST, None) => {
            let id = new_upload_id()?;
            let upload = Upload {
                repository: route.repository.clone(),
                path: app.store.temp_path(),
                size: 0,
                touched: Instant::now(),
                busy: true,
            };
            app.uploads
                .start(&id, upload.clone(), app.limits.max_uploads)?;
            let size = append_claimed(app, &id, &upload, body).await?;
            if let Some(digest) = query(parts, "digest") {
                app.uploads.release(&id, None);
                return finish(app, route, name, Upload { size, ..upload }, &digest).await;
            }
            app.uploads.release(&id, Some(size));
            Ok(accepted(name, &id, size))
        }
        (&Method::PATCH, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime, false)?;
            if let Some(refused) = out_of_order(parts, name, id, upload.size) {
                return Ok(refused);
            }
            let upload = app.uploads.get(id, &route.repository, lifetime, true)?;
            let size = append_claimed(app, id, &upload, body).await?;
            app.uploads.release(id, Some(size));
            Ok(accepted(name, id, size))
        }
        (&Method::PUT, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime, false)?;
            if let Some(refused) = out_of_order(parts, name, id, upload.size) {
                return Ok(refused);
            }
            let upload = app.uploads.get(id, &route.repository, lifetime, true)?;
            let size = append_claimed(app, id, &upload, body).await?;
            app.uploads.release(id, None);
            let digest = query(parts, "digest").ok_or_else(|| {
                let _ = std::fs::remove_file(&upload.path);
                RegistryError::new(ErrorCode::DigestInvalid, "the final PUT needs ?digest=")
            })?;
            finish(app, route, name, Upload { size, ..upload }, &digest).await
        }
        (&Method::GET, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime, false)?;
            Ok(progress(name, id, upload.size))
        }
        (&Method::DELETE, Some(id)) => {
            let upload = app.uploads.get(id, &route.repository, lifetime, true)?;
            app.uploads.release(id, None);
            let _ = std::fs::remove_file(&upload.path);
            Ok(cancelled())
        }
        (method, _) => Err(unsupported(method)),
    }
}

/// Verifies a complete upload against `digest` and commits it.
async fn finish(
    app: &App,
    route: &Route,
    name: &str,
    upload: Upload,
    digest: &str,
) -> Result<Response, RegistryError> {
    finish_file(app, route, name, upload.path, upload.size, digest).await
}
