//! Model weights on a backend (read in place from the mapped file, or uploaded), one buffer per
//! tensor, bound into graphs by name.

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use std::collections::HashMap;
use std::path::PathBuf;
use weft_backends::Backend;
use weft_graph::{BufferId, DType, GraphBuilder, Tensor};

#[derive(Clone, Debug)]
struct Entry {
    buffer: BufferId,
    dims: Vec<usize>,
    dtype: DType,
    bytes: usize,
}

/// Every tensor of a model file, resident on a backend.
#[derive(Debug)]
pub struct WeightStore {
    file: PathBuf,
    tensors: HashMap<String, Entry>,
    /// Bytes of the tensors the backend reads in place from the mapped file.
    mapped: usize,
}

impl WeightStore {
    /// Puts every tensor on the backend: read in place from the mapped file where the backend
    /// computes from host memory (the CPU; its pages are touched here, so that the file is
    /// read now rather than during the first run), else uploaded from it. `progress(done,
    /// total)` is called after each tensor (bytes).
    pub fn upload(
        gguf: &GgufFile,
        be: &mut dyn Backend,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<WeightStore> {
        let total: usize = gguf.tensors().iter().map(|t| t.bytes).sum();
        let mut done = 0;
        let mut tensors = HashMap::new();
        let mut mapped = 0;
        for info in gguf.tensors() {
            let data = gguf.tensor_data(info);
            let buffer = match gguf.tensor_host(info).map(|h| be.map_host(h)).transpose()? {
                Some(Some(buffer)) => {
                    touch_pages(data);
                    mapped += data.len();
                    buffer
                }
                _ => {
                    let buffer = be.alloc(data.len())?;
                    be.upload(buffer, 0, data)?;
                    buffer
                }
            };
            done += data.len();
            progress(done, total);
            tensors.insert(
                info.name.clone(),
                Entry {
                    buffer,
                    dims: info.dims(),
                    dtype: info.dtype,
                    bytes: data.len(),
                },
            );
        }
        Ok(WeightStore {
            file: gguf.path().to_path_buf(),
            tensors,
            mapped,
        })
    }

    /// Binds a tensor as a read-only external of the graph being built.
    pub fn bind(&self, b: &mut GraphBuilder, name: &str) -> Result<Tensor> {
        self.bind_opt(b, name)?
            .ok_or_else(|| ModelError::MissingWeight {
                name: name.into(),
                file: self.file.clone(),
            })
    }

    /// Like [`WeightStore::bind`], `None` when the file has no such tensor.
    pub fn bind_opt(&self, b: &mut GraphBuilder, name: &str) -> Result<Option<Tensor>> {
        let Some(e) = self.tensors.get(name) else {
            return Ok(None);
        };
        Ok(Some(b.weight(name, &e.dims, e.dtype, e.buffer)?))
    }

    /// Dimensions (outermost first) of a tensor.
    pub fn dims(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|e| e.dims.as_slice())
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Bytes of every tensor.
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(|e| e.bytes).sum()
    }

    /// Bytes of the tensors the backend reads in place from the mapped file (see
    /// [`Backend::map_host`](weft_backends::Backend::map_host)); the rest were copied to it.
    pub fn mapped_bytes(&self) -> usize {
        self.mapped
    }

    /// Requires a tensor of exactly `dims`, naming it and the file otherwise.
    pub fn expect_dims(&self, name: &str, dims: &[usize]) -> Result<()> {
        match self.dims(name) {
            None => Err(ModelError::MissingWeight {
                name: name.into(),
                file: self.file.clone(),
            }),
            Some(d) if d == dims => Ok(()),
            Some(d) => Err(ModelError::WrongShape {
                name: name.into(),
                file: self.file.clone(),
                want: dims.to_vec(),
                got: d.to_vec(),
            }),
        }
    }
}

/// Reads a byte of every page of `data`, so that a mapped file's pages are read from disk and
/// mapped now.
fn touch_pages(data: &[u8]) {
    const PAGE: usize = 4096;
    let mut sum = 0u8;
    for b in data.iter().step_by(PAGE) {
        sum = sum.wrapping_add(*b);
    }
    std::hint::black_box(sum);
}
