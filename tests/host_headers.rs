//! The device code's shared headers compiled for the host and checked against the Rust code
//! they mirror: glibc's expf (`csrc/common/expf.cuh`, the router's sigmoid) and the FP8 cache
//! layouts and rope-key conversion (`csrc/common/kv_layout.cuh`). Needs a C++ compiler (`c++`); skips without one.

mod host_cpp;

use flashseek::fp8::ScaleFmt;
use flashseek::kv_layout::{IndexFp8, LatentFp8, PAGE};

/// `expf.cuh` over every 509th f32 bit pattern (NaNs, infinities, subnormals and the overflow
/// and underflow edges among them) against Rust's `f32::exp`, the CPU backend's: the router's
/// sigmoid is only the CPU's if these agree. The port is glibc's, so other libms skip.
#[test]
fn device_expf_is_the_host_expf() {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        eprintln!("skipping the expf check: the port is glibc's expf, this host's libm is another");
        return;
    }
    const STEP: u64 = 509;
    let program = format!(
        "#include \"common/expf.cuh\"\n#include <cstdio>\n#include <cstring>\nint main() {{\n  for (unsigned long long \
         u = 0; u < (1ull << 32); u += {STEP}) {{\n    float x; unsigned b = (unsigned)u; std::memcpy(&x, &b, 4);\n    \
         float y = flashseek::glibc_expf(x); std::fwrite(&y, 4, 1, stdout);\n  }}\n}}\n"
    );
    let Some(out) = host_cpp::run("expf_host", &program) else { return };
    let got: Vec<f32> = out.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    assert_eq!(got.len() as u64, (1u64 << 32).div_ceil(STEP));
    let mut bad = Vec::new();
    for (i, &g) in got.iter().enumerate() {
        let x = f32::from_bits((i as u64 * STEP) as u32);
        let want = x.exp();
        if g.to_bits() != want.to_bits() && !(g.is_nan() && want.is_nan()) {
            bad.push(format!("exp({x:e}): port {g:e}, host {want:e}"));
        }
    }
    assert!(bad.is_empty(), "{} of {} inputs differ, e.g. {:?}", bad.len(), got.len(), &bad[..bad.len().min(5)]);
    eprintln!("expf: the device's port equals the host's f32::exp on {} inputs", got.len());
}

const LATENT: [(usize, usize); 5] = [(512, 64), (128, 64), (16, 0), (144, 8), (1024, 128)];
const INDEX: [usize; 4] = [128, 16, 192, 256];
const SLOTS: [usize; 6] = [0, 1, 63, 64, 130, 1 << 20];

/// Every offset of both layouts, device header against `src/kv_layout.rs`, at DeepSeek-V3.2's
/// widths, the fixtures' and odd ones (partial scale groups, no RoPE, slots past 2^26 bytes).
#[test]
fn kv_layout_header_is_the_rust_layout() {
    let mut program = String::from(
        "#include \"common/kv_layout.cuh\"\n#include <cstdio>\nusing namespace flashseek::kv_layout;\nint main() {\n",
    );
    program += "  std::printf(\"%d \", kPage);\n";
    for (nope, rope) in LATENT {
        program += &format!(
            "  {{ LatentFp8 l{{{nope}, {rope}}}; std::printf(\"%zu %zu %zu \", l.scale_offset(), l.rope_offset(), \
             l.token_bytes());\n"
        );
        for slot in SLOTS {
            program += &format!("    std::printf(\"%zu \", l.token({slot}ull)); ");
        }
        program += "}\n";
    }
    for dim in INDEX {
        program +=
            &format!("  {{ IndexFp8 x{{{dim}}}; std::printf(\"%zu %zu \", x.scales_per_key(), x.page_bytes());\n");
        for slot in SLOTS {
            program += &format!("    std::printf(\"%zu %zu \", x.key({slot}ull), x.scales({slot}ull)); ");
        }
        program += "}\n";
    }
    program += "}\n";
    let Some(out) = host_cpp::run("kv_layout_host", &program) else { return };
    let got = host_cpp::numbers(&out);

    let mut want = vec![PAGE];
    for (nope, rope) in LATENT {
        let l = LatentFp8::new(nope, rope).expect("a valid latent width");
        want.extend([l.scale_offset(), l.rope_offset(), l.token_bytes()]);
        want.extend(SLOTS.iter().map(|s| s * l.token_bytes()));
    }
    for dim in INDEX {
        let x = IndexFp8::new(dim, ScaleFmt::Exact).expect("a valid key width");
        want.extend([x.scales_per_key(), x.page_bytes()]);
        want.extend(SLOTS.iter().flat_map(|&s| [x.key(s), x.scales(s)]));
    }
    let want: Vec<u64> = want.into_iter().map(|v| v as u64).collect();
    assert_eq!(got, want);
}

/// `bf16_bits` of `kv_layout.cuh` (the device's rope-key conversion) against the `half` crate's
/// `bf16::from_f32` (the CPU encoder's) over every 257th f32 bit pattern: NaNs of every sign and
/// payload, infinities, subnormals, and the rounding ties in between.
#[test]
fn device_bf16_is_the_cpu_bf16() {
    const STEP: u64 = 257;
    let program = format!(
        "#include \"common/kv_layout.cuh\"\n#include <cstdio>\nint main() {{\n  for (unsigned long long u = 0; u < \
         (1ull << 32); u += {STEP}) {{\n    unsigned short b = flashseek::kv_layout::bf16_bits((unsigned)u); \
         std::fwrite(&b, 2, 1, stdout);\n  }}\n}}\n"
    );
    let Some(out) = host_cpp::run("bf16_host", &program) else { return };
    let got: Vec<u16> = out.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect();
    assert_eq!(got.len() as u64, (1u64 << 32).div_ceil(STEP));
    let bad: Vec<String> = got
        .iter()
        .enumerate()
        .filter_map(|(i, &g)| {
            let x = f32::from_bits((i as u64 * STEP) as u32);
            let want = half::bf16::from_f32(x).to_bits();
            (g != want).then(|| format!("{:#010x}: device {g:#06x}, cpu {want:#06x}", x.to_bits()))
        })
        .collect();
    assert!(bad.is_empty(), "{} of {} inputs differ, e.g. {:?}", bad.len(), got.len(), &bad[..bad.len().min(5)]);
}
