"""The seed's guest as xen-tools wrote its cfg, after DRBD was put under its disks."""

SEED_CFG = """\
#
# Configuration file for the Xen instance logger, created
# by xen-tools 4.9.2 on Tue Nov 24 10:00:00 2026.
#
bootloader = 'pygrub'
vcpus       = '1'
memory      = '2048'
root        = '/dev/xvda2 ro'
disk        = [
                  'phy:/dev/drbd5,xvda2,w',
                  'phy:/dev/drbd6,xvda3,w',
                  'phy:/dev/vg_main/logger-swap,xvda1,w',
              ]
name        = 'logger'
vif         = [ 'mac=00:16:3E:37:D0:70,bridge=br0' ]
on_poweroff = 'destroy'
on_reboot   = 'restart'
on_crash    = 'restart'
"""


def seed_cfg_of(name: str, n: int) -> str:
    """The seed's cfg for its n-th copy `name` (n = 0: the seed itself): own DRBD devices
    (drbd10*n, drbd10*n+1), swap LV and MAC."""
    if n == 0:
        return SEED_CFG
    return (SEED_CFG.replace("name        = 'logger'", f"name        = '{name}'")
            .replace("/dev/drbd5", f"/dev/drbd{10 * n}").replace("/dev/drbd6", f"/dev/drbd{10 * n + 1}")
            .replace("logger-swap", f"{name}-swap").replace("D0:70", f"D0:7{n}"))
