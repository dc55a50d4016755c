//! Keys, values and the immutable delta and image layer files.
//!
//! - [`Key`] (18 bytes, [`key`]) names a relation block, a relation size, an SLRU page, a
//!   directory, a relmapper file, a two-phase state file or the checkpoint/control data.
//! - [`Value`] ([`value`]) is a page image or a WAL record with a `will_init` bit.
//! - Delta layers ([`delta`]) map (key, LSN) → value over a key range × LSN range; image
//!   layers ([`image`]) map key → page image at one LSN. Both share one file layout
//!   ([`format`](mod@format)) with crc32c on the header, every index block, the fence array, every value
//!   and the footer; writers stream with bounded memory ([`writer`]), readers use mmap
//!   ([`reader`]).
//! - Layer file names carry the ranges ([`name`]).
//!
//! Nothing here knows about tenants or timelines.

pub mod compress;
pub mod delta;
pub mod error;
pub mod format;
pub mod image;
pub mod key;
pub mod name;
pub mod reader;
pub mod sample_pages;
pub mod value;
pub mod writer;

pub use compress::Compression;
pub use delta::{DeltaEntry, DeltaLayerReader, DeltaLayerWriter, Versions};
pub use error::{LayerError, Result};
pub use image::{ImageLayerReader, ImageLayerWriter};
pub use key::{Key, KeyKind, ParseKeyError, SlruKind, KEY_SIZE};
pub use name::{LayerDesc, LayerKind, LayerNameError};
pub use reader::ValueHandle;
pub use value::{RecordPayload, Value, ValueError, WalRecord};
pub use walproto::{Lsn, RelFileNode};
pub use writer::WrittenLayer;
