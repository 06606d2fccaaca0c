"""The real Xen host's lab plumbing that runs without the VM: its qemu command line and the
inventory that names it (tests/lab/realxen.py; the VM itself: tests/e2e/test_real_xen.py)."""

import shutil
from pathlib import Path

import pytest
import yaml

from tests.lab import SWITCH_NS, config, realxen, vms


def test_xen_boots_as_the_multiboot_kernel_with_dom0_and_its_command_line_as_modules():
    image = vms.Image(Path("/c/root.img"), Path("/c/vmlinuz"), Path("/c/initrd.img"), {}, Path("/c/xen.elf"))
    argv = vms._qemu_argv(realxen.SPEC, image, [Path("/w/root.img")], Path("/w"), "tap0")
    kernel, modules, xen_line = (argv[argv.index(flag) + 1] for flag in ("-kernel", "-initrd", "-append"))
    assert kernel == "/c/xen.elf"
    assert xen_line == "console=com1 com1=115200,8n1 dom0_mem=768M,max:768M"
    # qemu splits -initrd at single commas: the module list's commas are written twice
    dom0, initrd = modules.replace(",,", "\0").split(",")
    assert initrd == "/c/initrd.img"
    assert dom0.replace("\0", ",") == f"/c/vmlinuz {realxen.SPEC.kernel_cmdline()}"
    assert "lab.modules=xen-evtchn,xen-gntdev," in dom0.replace("\0", ",")
    assert argv[argv.index("-cpu") + 1] == "qemu64,+svm"
    assert "virtio-scsi-pci,id=scsi0" in argv


def test_an_image_without_a_hypervisor_boots_its_kernel():
    image = vms.Image(Path("/c/root.img"), Path("/c/vmlinuz"), Path("/c/initrd.img"), {})
    spec = vms.VmSpec("plain", vms.ImageSpec("plain"), "10.77.1.30")
    argv = vms._qemu_argv(spec, image, [], Path("/w"), "tap0")
    assert [argv[argv.index(flag) + 1] for flag in ("-kernel", "-initrd", "-append")] == [
        "/c/vmlinuz", "/c/initrd.img", spec.kernel_cmdline()]


def test_with_a_real_xen_the_inventory_names_the_vm_as_xen1():
    hosts = yaml.safe_load(config.inventory(config.Settings(image="systemd", xen="real")))["hosts"]
    assert (hosts["xen1"]["address"], hosts["xen1"]["known_hosts"]) == (realxen.ADDRESS, str(vms.KNOWN_HOSTS))
    assert hosts["xen1"]["proxy_command"].endswith(f" netns exec {SWITCH_NS} {shutil.which('nc')} "
                                                   f"{realxen.ADDRESS} 22")
    simulated = yaml.safe_load(config.inventory(config.Settings(image="systemd")))["hosts"]
    assert simulated["kvm1"] == hosts["kvm1"]
    assert simulated["xen1"]["address"] == "10.77.0.11"


def test_a_real_xen_needs_a_real_guest():
    with pytest.raises(ValueError, match="a real Xen boots a real guest"):
        config.Settings(xen="real")
