//! MXFP4 tensors (gpt-oss's expert weights), which candle 0.11 cannot
//! read: each block of 32 values is one E8M0 scale byte and 16 bytes of
//! 4-bit E2M1 codes (value `j` in the low nibble of byte `j`, value
//! `j + 16` in the high one), as GGML lays it out.
//!
//! They are dequantized here and requantized to Q8_0, which the engine's
//! kernels multiply: 8.5 bits a weight against MXFP4's 4.25 (gpt-oss-20b's
//! experts take about 21 GB instead of 12), and each weight moves by under
//! half a Q8_0 step. A kernel of their own (MXFP4 against Q8_0
//! activations, as llama.cpp has) would keep the smaller size; the
//! numbers decide when a real gpt-oss is served here.

use std::io::{Read, Seek, SeekFrom};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result, Tensor};

/// Values per block.
pub const BLOCK: usize = 32;
/// Bytes per block: the scale and 16 bytes of codes.
pub const BLOCK_BYTES: usize = 17;

/// E2M1 values, doubled (GGML's `kvalues_mxfp4`; the scale is halved to
/// match).
const VALUES: [i8; 16] = [0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12];

/// Half the E8M0 scale `e`, `2^(e - 128)` (GGML's
/// `ggml_e8m0_to_fp32_half`; below `e = 2` a subnormal).
fn half_scale(e: u8) -> f32 {
    let bits = if e < 2 {
        0x0020_0000u32 << e
    } else {
        u32::from(e - 1) << 23
    };
    f32::from_bits(bits)
}

/// The values of whole MXFP4 blocks, appended to `out`.
pub fn dequantize(blocks: &[u8], out: &mut Vec<f32>) {
    for block in blocks.chunks_exact(BLOCK_BYTES) {
        let d = half_scale(block[0]);
        let codes = &block[1..];
        out.extend(
            codes
                .iter()
                .map(|c| f32::from(VALUES[usize::from(c & 0x0f)]) * d),
        );
        out.extend(
            codes
                .iter()
                .map(|c| f32::from(VALUES[usize::from(c >> 4)]) * d),
        );
    }
}

/// Reads MXFP4 tensor `name` of `content` (whose header showed it to
/// candle as F32, see `gguf_alignment::Overlay`) and returns it as Q8_0.
pub fn read_as_q8_0<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    name: &str,
    device: &Device,
) -> Result<QTensor> {
    let info = content
        .tensor_infos
        .get(name)
        .ok_or_else(|| candle_core::Error::Msg(format!("no tensor {name}")))?;
    let shape = info.shape.clone();
    let values = shape.elem_count();
    if values % BLOCK != 0 {
        candle_core::bail!("MXFP4 tensor {name} of {values} values is not whole blocks");
    }
    // The bytes must be in the file before any is allocated: a corrupt
    // header may declare a tensor of terabytes.
    let size = (values / BLOCK) as u64 * BLOCK_BYTES as u64;
    let start = content
        .tensor_data_offset
        .checked_add(info.offset)
        .ok_or_else(|| candle_core::Error::Msg(format!("MXFP4 tensor {name}: bad offset")))?;
    let file_end = reader.seek(SeekFrom::End(0))?;
    if start.checked_add(size).is_none_or(|end| end > file_end) {
        candle_core::bail!(
            "MXFP4 tensor {name} of {size} bytes at {start} is past the file's end ({file_end})"
        );
    }
    let mut bytes = vec![0u8; size as usize];
    reader.seek(SeekFrom::Start(start))?;
    reader.read_exact(&mut bytes)?;
    let mut out = Vec::with_capacity(values);
    dequantize(&bytes, &mut out);
    let t = Tensor::from_vec(out, shape, device)?;
    QTensor::quantize(&t, GgmlDType::Q8_0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_dequantize_as_ggml_lays_them_out() {
        // Scale byte 128: half-scale 2^0 = 1, so values are the table's.
        let mut block = vec![128u8];
        // Byte j: low nibble code j % 16 (value j), high nibble code 9
        // (value -1).
        block.extend((0..16u8).map(|j| (j % 16) | (9 << 4)));
        let mut out = Vec::new();
        dequantize(&block, &mut out);
        assert_eq!(out.len(), BLOCK);
        assert_eq!(&out[..8], &[0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0]);
        assert_eq!(out[9], -1.0);
        assert!(out[16..].iter().all(|v| *v == -1.0));
        // Scale byte 130: 2^2.
        block[0] = 130;
        out.clear();
        dequantize(&block, &mut out);
        assert_eq!(out[7], 48.0);
        assert_eq!(half_scale(0), 2f32.powi(-128));
        assert_eq!(half_scale(1), 2f32.powi(-127));
    }

    #[test]
    fn a_tensor_past_the_files_end_is_an_error_not_an_allocation() {
        use candle_core::quantized::gguf_file::{TensorInfo, VersionedMagic};
        use std::collections::HashMap;
        // A terabyte-sized tensor declared in a 64-byte file.
        let info = TensorInfo {
            ggml_dtype: GgmlDType::F32,
            shape: candle_core::Shape::from((1usize << 20, 1usize << 20)),
            offset: 0,
        };
        let content = Content {
            magic: VersionedMagic::GgufV3,
            metadata: HashMap::new(),
            tensor_infos: HashMap::from([("t".to_owned(), info)]),
            tensor_data_offset: 0,
        };
        let mut file = std::io::Cursor::new(vec![0u8; 64]);
        let err = read_as_q8_0(&content, &mut file, "t", &Device::Cpu).unwrap_err();
        assert!(err.to_string().contains("past the file's end"), "{err}");
    }
}
