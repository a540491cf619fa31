//! Tiles kept in a file of the cache folder and mapped, so that every process on a machine
//! that loads the same weight shares one copy of it.
//!
//! Each `swarm-client` process reads the whole LM head for every token (SmolLM2-135M: 49152 x
//! 576 values, 29 MiB as Q8_0 tiles). Eight clients with private copies read 232 MiB a round,
//! which no cache holds; eight that map one file read the same 29 MiB, which the last-level
//! cache can. Measured on the 2-core VM, eight processes each reading a 32 MiB buffer in a loop:
//! 657 passes a second in all with private buffers, 1577 with one mapped file (one process
//! alone: 713-800). Mapping also skips building the tiles at start (reading and rearranging the
//! file's blocks).
//!
//! The file is the tiles' bytes after a 64-byte header that names the format, the byte order,
//! the tile kind and the weight's shape; a file whose header or length does not match is
//! rebuilt. It is written aside and renamed into place, never changed in place, so a process
//! that maps it never sees it change (a replaced file stays mapped as it was).

use std::marker::PhantomData;
use std::path::Path;
use std::sync::Arc;

use bytemuck::Pod;
use memmap2::Mmap;

use super::{PackedMatrix, Store, int8};
use crate::ModelError;

const MAGIC: &[u8; 8] = b"SWTILES\0";
/// Bumped whenever a tile's layout changes (2: scales as f16).
const VERSION: u32 = 2;
/// Written in the machine's byte order: a file from a machine of the other order is rebuilt.
const BYTE_ORDER: u32 = 0x0102_0304;
/// Header bytes before the tiles (a multiple of the tiles' alignment).
const HEADER: usize = 64;

/// A weight's tiles: in memory of the process's own, or in a mapped file.
#[derive(Clone)]
pub(crate) enum Tiles<T> {
    Owned(Vec<T>),
    Mapped(Arc<Mmap>, PhantomData<T>),
}

impl<T: Pod> std::ops::Deref for Tiles<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match self {
            Tiles::Owned(v) => v,
            // The length and alignment were checked when the file was mapped.
            Tiles::Mapped(map, _) => bytemuck::cast_slice(&map[HEADER..]),
        }
    }
}

impl<T: Pod> std::fmt::Debug for Tiles<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Tiles::Owned(_) => "owned",
            Tiles::Mapped(..) => "mapped",
        };
        write!(f, "{} {kind} tiles", self.len())
    }
}

impl<T: Pod + PartialEq> PartialEq for Tiles<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

/// Which tile a file holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Q4 = 4,
    Q8 = 8,
}

fn header(kind: Kind, rows: usize, cols: usize, tiles: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_ne_bytes());
    h[12..16].copy_from_slice(&BYTE_ORDER.to_ne_bytes());
    h[16..20].copy_from_slice(&(kind as u32).to_ne_bytes());
    for (i, v) in [rows, cols, tiles].into_iter().enumerate() {
        h[24 + 8 * i..32 + 8 * i].copy_from_slice(&(v as u64).to_ne_bytes());
    }
    h
}

/// `rows x cols` tiles mapped from `path`, or why not.
fn map(path: &Path, rows: usize, cols: usize) -> Result<PackedMatrix, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    // SAFETY: the file is only ever replaced by a rename, never written in place (module
    // comment), so the mapped bytes do not change while mapped.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| e.to_string())?;
    let (q4, q8) = (Kind::Q4, Kind::Q8);
    let groups = rows.div_ceil(int8::TILE_ROWS);
    let count = groups * (cols / super::BLOCK);
    let store = if map.get(..HEADER) == Some(&header(q4, rows, cols, count)[..]) {
        Store::Q4Tiles(checked::<int8::Q4Tile>(map, count)?)
    } else if map.get(..HEADER) == Some(&header(q8, rows, cols, count)[..]) {
        Store::Q8Tiles(checked::<int8::Q8Tile>(map, count)?)
    } else {
        return Err("its header is not that of this weight's tiles".into());
    };
    Ok(PackedMatrix { rows, cols, store })
}

fn checked<T: Pod>(map: Mmap, count: usize) -> Result<Tiles<T>, String> {
    let body = &map[HEADER..];
    match bytemuck::try_cast_slice::<u8, T>(body) {
        Ok(tiles) if tiles.len() == count => Ok(Tiles::Mapped(Arc::new(map), PhantomData)),
        Ok(tiles) => Err(format!("it holds {} tiles, not {count}", tiles.len())),
        Err(e) => Err(format!("its tiles cannot be read in place: {e}")),
    }
}

/// Writes `w`'s tiles to `path` (aside, then renamed into place).
fn write(path: &Path, w: &PackedMatrix) -> std::io::Result<()> {
    let (kind, count, bytes): (Kind, usize, &[u8]) = match &w.store {
        Store::Q4Tiles(t) => (Kind::Q4, t.len(), bytemuck::cast_slice(t)),
        Store::Q8Tiles(t) => (Kind::Q8, t.len(), bytemuck::cast_slice(t)),
        _ => return Ok(()),
    };
    crate::fetch::write_aside(path, &[&header(kind, w.rows, w.cols, count), bytes])
}

/// The weight's tiles from the file at `path`, shared with every other process that maps it;
/// built by `load` (and written there for the next process) when the file is missing or does
/// not hold them. A weight that `load` does not give as tiles is returned as it is; one whose
/// file cannot be written or mapped (a read-only cache) keeps memory of its own.
pub(crate) fn shared(
    path: &Path,
    rows: usize,
    cols: usize,
    load: impl FnOnce() -> Result<PackedMatrix, ModelError>,
) -> Result<PackedMatrix, ModelError> {
    match map(path, rows, cols) {
        Ok(w) => return Ok(w),
        Err(why) if path.exists() => {
            tracing::info!(path = %path.display(), %why, "rebuilding a tile file");
        }
        Err(_) => {}
    }
    let w = load()?;
    if !matches!(w.store, Store::Q4Tiles(_) | Store::Q8Tiles(_)) {
        return Ok(w);
    }
    if let Err(e) = write(path, &w) {
        tracing::debug!(path = %path.display(), error = %e, "tiles not written; kept in memory");
        return Ok(w);
    }
    Ok(map(path, rows, cols).unwrap_or(w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;

    fn tiled(ty: GgmlType, rows: usize, cols: usize) -> PackedMatrix {
        super::super::tests::tiled(&super::super::tests::packed(ty, rows, cols, 7))
    }

    #[test]
    fn a_mapped_weight_equals_the_built_one_and_computes_the_same() {
        let dir = tempfile::tempdir().unwrap();
        for (i, ty) in [GgmlType::Q4_1, GgmlType::Q8_0].into_iter().enumerate() {
            let path = dir.path().join(format!("w{i}"));
            let built = tiled(ty, 40, 64);
            let first = shared(&path, 40, 64, || Ok(built.clone())).unwrap();
            assert!(matches!(
                &first.store,
                Store::Q4Tiles(Tiles::Mapped(..)) | Store::Q8Tiles(Tiles::Mapped(..))
            ));
            assert_eq!(first, built);
            // The second load maps the file without building anything.
            let second = shared(&path, 40, 64, || panic!("the file holds the tiles")).unwrap();
            assert_eq!(second, built);
            let x: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
            let (mut a, mut b) = (vec![0f32; 3 * 40], vec![0f32; 3 * 40]);
            built.matmul_each(&x, 3, &mut a).unwrap();
            second.matmul_each(&x, 3, &mut b).unwrap();
            assert_eq!(a, b);
        }
    }

    #[test]
    fn a_file_of_another_shape_or_a_cut_file_is_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w");
        let small = tiled(GgmlType::Q8_0, 16, 64);
        shared(&path, 16, 64, || Ok(small.clone())).unwrap();
        let big = tiled(GgmlType::Q8_0, 32, 64);
        let got = shared(&path, 32, 64, || Ok(big.clone())).unwrap();
        assert_eq!(got, big);
        // Cut short: the header matches, the length does not.
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 100).unwrap();
        drop(f);
        assert!(map(&path, 32, 64).unwrap_err().contains("tiles"));
        let got = shared(&path, 32, 64, || Ok(big.clone())).unwrap();
        assert_eq!(got, big);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);
    }

    #[test]
    fn an_untiled_weight_or_an_unwritable_folder_keeps_memory_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let f32w = super::super::tests::packed(GgmlType::F32, 16, 64, 1);
        let got = shared(&dir.path().join("f"), 16, 64, || Ok(f32w.clone())).unwrap();
        assert_eq!(got, f32w);
        assert!(!dir.path().join("f").exists());
        // A path under a file cannot be created.
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let built = tiled(GgmlType::Q4_1, 16, 64);
        let got = shared(&blocker.join("w"), 16, 64, || Ok(built.clone())).unwrap();
        assert!(matches!(&got.store, Store::Q4Tiles(Tiles::Owned(_))));
        assert_eq!(got, built);
    }
}
