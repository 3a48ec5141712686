"""PyTorch reference: torchvision's VGG16/VGG19 `features`, written out by hand (no torchvision).

Same module order as torchvision's `make_layers(cfg, batch_norm=False)`, so state-dict keys are
`features.N.weight` / `features.N.bias` at the same N, and torchvision's init
(kaiming normal, fan out, ReLU; zero bias).
"""

from __future__ import annotations

import torch
from torch import nn

# torchvision cfgs "D" (VGG16) and "E" (VGG19).
CFGS = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class TorchVGG(nn.Module):
    def __init__(self, arch: str):
        super().__init__()
        layers, cin = [], 3
        for v in CFGS[arch]:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                conv = nn.Conv2d(cin, v, kernel_size=3, padding=1)
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(conv.bias, 0)
                layers += [conv, nn.ReLU(inplace=False)]
                cin = v
        self.features = nn.Sequential(*layers)

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All taps (`convB_I` before ReLU, `reluB_I` after) of `x` `[B, 3, H, W]`, NCHW."""
        out, block, conv = {}, 1, 0
        for m in self.features:
            x = m(x)
            if isinstance(m, nn.Conv2d):
                conv += 1
                out[f"conv{block}_{conv}"] = x
            elif isinstance(m, nn.ReLU):
                out[f"relu{block}_{conv}"] = x
            else:
                block, conv = block + 1, 0
        return out
