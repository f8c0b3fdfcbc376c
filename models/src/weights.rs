//! Model weights uploaded to a backend, one buffer per tensor, bound into graphs by name.

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
}

impl WeightStore {
    /// Uploads every tensor straight from the mapped file; `progress(done, total)` is called
    /// after each one (bytes).
    pub fn upload(
        gguf: &GgufFile,
        be: &mut dyn Backend,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<WeightStore> {
        let total: usize = gguf.tensors().iter().map(|t| t.bytes).sum();
        let mut done = 0;
        let mut tensors = HashMap::new();
        for info in gguf.tensors() {
            let data = gguf.tensor_data(info);
            let buffer = be.alloc(data.len())?;
            be.upload(buffer, 0, data)?;
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
