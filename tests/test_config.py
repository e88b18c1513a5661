# SPDX-License-Identifier: BSD-3-Clause
"""The TOML configuration file (vfu_platform/config.py) and how the CLI turns it into
bridge options.  Files are real files in a temporary directory."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from vfu_platform import config as config_module
from vfu_platform.backends.base import AckRegister
from vfu_platform.bridge.config_space import PciIds
from vfu_platform.backends.sim.identity import DEFAULT_IDENTITY
from vfu_platform.cli import bridge_options, build_parser
from vfu_platform.config import Config, ConfigError, load_config


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "vfu.toml"
    path.write_text(text)
    return load_config(str(path))


def load_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as error:
        load(tmp_path, text)
    message = str(error.value)
    assert "\n" not in message, "a config error is one line"
    return message


def serve_args(*extra: str) -> argparse.Namespace:
    return build_parser().parse_args(["serve", "--socket", "x.sock", *extra])


# --------------------------------------------------------------------------- parsing


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config == Config()
    assert config.device.model is None
    assert config.bridge.irq_mode is None
    assert config.bridge.use_model_acks is True
    assert config.server.max_data_xfer_size == 1 << 20
    assert config.server.write_multiple is True


def documented_example(start: str, end: str) -> str:
    """The indented TOML lines between two markers of the config module's docstring."""
    example = (config_module.__doc__ or "").split(start, 1)[1].split(end, 1)[0]
    return "\n".join(line[4:] for line in example.splitlines() if line.startswith("    "))


def test_the_documented_devices_example_is_valid(tmp_path: Path) -> None:
    config = load(tmp_path, documented_example("Devices example:", "Unknown keys"))
    served = config_module.expand_devices(config)
    assert [d[0] for d in served] == [f"/run/vfu/edu{n}.sock" for n in range(4)] + ["/run/vfu/gpio.sock"]
    assert served[-1][1].device.options == {"lines": 4} and served[-1][1].bridge.irq_mode == "msix"
    assert served[-1][2] == "/var/log/vfu/gpio.trace"


def test_the_documented_example_is_valid(tmp_path: Path) -> None:
    config = load(tmp_path, documented_example("Example:", "Devices example:"))
    assert config.device.model == "gpio"
    assert config.device.options == {"lines": 4}
    assert (config.bridge.vendor_id, config.bridge.device_id) == (0x1234, 0x5650)
    assert config.bridge.irq_mode == "msix"
    assert [(r.index, r.mmap) for r in config.bridge.region] == [(1, "never")]
    assert [(a.irq, a.region, a.offset, a.mask) for a in config.bridge.ack] == [(0, 0, 0x104, 1)]
    assert config.server.max_data_xfer_size == 1048576


def test_every_section(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
[device]
model = "edu"
options = { fact_delay = 0.5, dma_mask = 0xffffffff }

[bridge]
vendor_id = 0xffff
device_id = 0
subsystem_vendor_id = 0x8086
subsystem_id = 0x1
class_code = 0xffffff
revision = 0xff
irq_mode = "intx"
page_size = 65536
use_model_acks = false

[[bridge.region]]
index = 0
mmap = "always"
bits64 = true
prefetchable = true

[[bridge.ack]]
irq = 0
region = 0
offset = 0x64

[server]
max_data_xfer_size = 67108864
write_multiple = false
""",
    )
    assert config.device.options == {"fact_delay": 0.5, "dma_mask": 0xFFFFFFFF}
    assert config.bridge.class_code == 0xFFFFFF and config.bridge.revision == 0xFF
    assert config.bridge.page_size == 65536
    assert config.bridge.use_model_acks is False
    region = config.bridge.region[0]
    assert (region.mmap, region.bits64, region.prefetchable) == ("always", True, True)
    assert config.bridge.ack[0].mask == 0xFFFFFFFF  # default: any bit acknowledges
    assert config.server.max_data_xfer_size == 64 << 20
    assert config.server.write_multiple is False


def test_host_device_section(tmp_path: Path) -> None:
    config = load(tmp_path, '[device]\nhost = "fff51000.ethernet"\n')
    assert config.device.host == "fff51000.ethernet"
    assert load(tmp_path, '[device]\nsysfsdev = "/sys/bus/platform/devices/x"\n').device.sysfsdev


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("bogus = 1\n", "bogus"),
        ("[device]\nmodle = \"edu\"\n", "modle"),
        ("[bridge]\nvendor = 1\n", "vendor"),
        ("[server]\nmax_msg_fds = 4\n", "max_msg_fds"),
        ("[[bridge.region]]\nindex = 0\nmapped = true\n", "mapped"),
        ("[[bridge.ack]]\nirq = 0\nregion = 0\noffset = 0\nvalue = 1\n", "value"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in load_error(tmp_path, text)


@pytest.mark.parametrize(
    "text",
    [
        "[bridge]\nvendor_id = 0x10000\n",
        "[bridge]\nvendor_id = -1\n",
        "[bridge]\nclass_code = 0x1000000\n",
        "[bridge]\nrevision = 256\n",
        "[bridge]\nirq_mode = \"msi\"\n",
        "[bridge]\npage_size = 2048\n",
        "[bridge]\nuse_model_acks = \"yes\"\n",
        "[[bridge.region]]\nindex = -1\n",
        "[[bridge.region]]\nmmap = \"never\"\n",  # index is required
        "[[bridge.ack]]\nirq = 0\nregion = 0\noffset = 0\nmask = 0x100000000\n",
        "[server]\nmax_data_xfer_size = 4095\n",
        "[server]\nmax_data_xfer_size = 67108865\n",
        "[device]\noptions = 3\n",
        "[device]\nmodel = 3\n",
    ],
)
def test_out_of_range_and_wrongly_typed_values(tmp_path: Path, text: str) -> None:
    message = load_error(tmp_path, text)
    assert "vfu.toml" in message


@pytest.mark.parametrize("text", ["[bridge\n", "a = \n", "[device]\nmodel = 'x\n", "x = 1\nx = 2\n", "\x00"])
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    assert "not valid TOML" in load_error(tmp_path, text)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    for path in (tmp_path / "missing.toml", tmp_path):
        with pytest.raises(ConfigError) as error:
            load_config(str(path))
        assert re.match(r"cannot read config .*: \w", str(error.value))


# --------------------------------------------------------------------------- config -> bridge options


def test_bridge_options_default_to_the_model_identity(tmp_path: Path) -> None:
    options = bridge_options(serve_args(), Config(), "gpio")
    assert options.ids == PciIds(vendor=0x1234, device=0x5650, class_code=0x088000)  # GpioDevice.pci_*
    assert options.irq_mode == "intx"
    assert options.use_model_acks is True
    assert options.ack_registers == ()
    unknown = bridge_options(serve_args(), Config(), "mypkg.mod:Dev").ids  # not edu's: the reserved default
    assert (unknown.vendor, unknown.device, unknown.class_code) == (
        DEFAULT_IDENTITY.vendor, DEFAULT_IDENTITY.device, DEFAULT_IDENTITY.class_code)


def test_bridge_options_override_single_ids(tmp_path: Path) -> None:
    config = load(tmp_path, "[bridge]\ndevice_id = 0xbeef\nrevision = 2\n")
    ids = bridge_options(serve_args(), config, "edu").ids
    assert (ids.vendor, ids.device, ids.revision, ids.class_code) == (0x1234, 0xBEEF, 2, 0x00FF00)


def test_zero_is_a_valid_override(tmp_path: Path) -> None:
    config = load(tmp_path, "[bridge]\nclass_code = 0\nrevision = 0\n")
    ids = bridge_options(serve_args(), config, "edu").ids
    assert (ids.class_code, ids.revision) == (0, 0)


def test_irq_mode_command_line_beats_config(tmp_path: Path) -> None:
    config = load(tmp_path, '[bridge]\nirq_mode = "msix"\n')
    assert bridge_options(serve_args(), config, "gpio").irq_mode == "msix"
    assert bridge_options(serve_args("--irq-mode", "intx"), config, "gpio").irq_mode == "intx"


def test_regions_and_acks_reach_the_bridge(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
[bridge]
use_model_acks = false
[[bridge.region]]
index = 1
mmap = "never"
bits64 = true
[[bridge.ack]]
irq = 2
region = 0
offset = 0x124
mask = 1
""",
    )
    options = bridge_options(serve_args(), config, "gpio")
    assert options.regions[1].mmap == "never" and options.regions[1].is_64bit
    assert options.ack_registers == (AckRegister(irq=2, region=0, offset=0x124, mask=1),)
    assert options.use_model_acks is False
