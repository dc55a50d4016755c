//! Image layers of about [`IMAGE_LAYER_BYTES`], cut so that their key ranges tile
//! `Key::MIN..Key::MAX`: a key no layer holds does not exist at the import LSN.

use std::path::Path;

use layer_format::{ImageLayerWriter, Key, LayerDesc, Lsn};

use super::ImportError;
use crate::timeline::TimelineError;

/// Target size of one image layer file.
pub const IMAGE_LAYER_BYTES: u64 = 128 * 1024 * 1024;

/// Streams images (in key order) into image layers. A layer's end is only known when the
/// next one starts, so values are buffered per layer (bounded by the cut size) and written
/// when the layer closes.
pub(super) struct LayerCutter<'a> {
    dir: &'a Path,
    lsn: Lsn,
    start: Key,
    pending: Vec<(Key, Vec<u8>)>,
    pending_bytes: u64,
    done: Vec<LayerDesc>,
    bytes: u64,
}

impl<'a> LayerCutter<'a> {
    pub(super) fn new(dir: &'a Path, lsn: Lsn) -> Self {
        LayerCutter {
            dir,
            lsn,
            start: Key::MIN,
            pending: Vec::new(),
            pending_bytes: 0,
            done: Vec::new(),
            bytes: 0,
        }
    }

    pub(super) fn put(&mut self, key: Key, v: &[u8]) -> Result<(), ImportError> {
        if self.pending_bytes >= IMAGE_LAYER_BYTES {
            self.write(key)?;
        }
        self.pending_bytes += v.len() as u64;
        self.pending.push((key, v.to_vec()));
        Ok(())
    }

    fn write(&mut self, end: Key) -> Result<(), ImportError> {
        let mut w = ImageLayerWriter::new(self.dir, self.start..end, self.lsn)
            .map_err(TimelineError::from)?;
        for (k, v) in self.pending.drain(..) {
            w.put(k, &v).map_err(TimelineError::from)?;
        }
        let written = w.finish().map_err(TimelineError::from)?;
        self.bytes += written.file_size;
        self.done.push(written.desc);
        self.start = end;
        self.pending_bytes = 0;
        Ok(())
    }

    /// Closes the last layer; returns every layer written and their total size.
    pub(super) fn finish(mut self) -> Result<(Vec<LayerDesc>, u64), ImportError> {
        self.write(Key::MAX)?;
        Ok((self.done, self.bytes))
    }
}
