# Vendored from the PyTorch original of PatchUp, for speed comparisons only:
#   https://github.com/chandar-lab/PatchUp (commit 31133f358c2b59536eeb5ef304acec2b1436ec23)
#   files models/preresnet.py, modules/patchup.py, modules/cutmix.py,
#   modules/mixup.py, utility/utils.py (to_one_hot, accuracy), main.py (train()).
#
# MIT License
#
# Copyright (c) 2020 chandar-lab
#
# Permission is hereby granted, free of charge, to any person obtaining a copy
# of this software and associated documentation files (the "Software"), to deal
# in the Software without restriction, including without limitation the rights
# to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
# copies of the Software, and to permit persons to whom the Software is
# furnished to do so, subject to the following conditions:
#
# The above copyright notice and this permission notice shall be included in all
# copies or substantial portions of the Software.
#
# THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
# IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
# FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
# AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
# LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
# OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
# SOFTWARE.
#
# Changes from the original, all marked "[changed]": the modules are merged
# into this file; imports of unused parts (DropBlock, data_loader,
# torchvision, plotting) are dropped; `np.int` (removed in NumPy 1.24) is
# `int`; the body of main.py's `train()` loop is the function `train_step`
# (one batch), with the optimizer built as main.py builds it (`make_optimizer`).
# The model code, the PatchUp module and the loss are otherwise unchanged,
# including the original's use of `patchup_0` (block 7) at every position.
from enum import Enum
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd import Variable

if torch.cuda.is_available():
    device = torch.device("cuda")
else:
    device = torch.device("cpu")


# ----------------------------------------------------------- utility/utils.py
def to_one_hot(inp, num_classes):
    y_onehot = torch.FloatTensor(inp.size(0), num_classes)
    y_onehot.zero_()

    y_onehot.scatter_(1, inp.unsqueeze(1).data.cpu(), 1)

    return Variable(y_onehot.to(device), requires_grad=False)


def accuracy(output, target, topk=(1,)):
    maxk = max(topk)
    batch_size = target.size(0)

    _, pred = output.topk(maxk, 1, True, True)
    pred = pred.t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))

    res = []
    for k in topk:
        correct_k = correct[:k].reshape(-1).float().sum(0)  # [changed] view -> reshape (newer torch)
        res.append(correct_k.mul_(100.0 / batch_size))
    return res


# ----------------------------------------------------------- modules/mixup.py
def mixup_process(out, target_reweighted, lam):
    indices = np.random.permutation(out.size(0))
    out = out * lam + out[indices] * (1 - lam)
    target_shuffled_onehot = target_reweighted[indices]
    target_reweighted = target_reweighted * lam + target_shuffled_onehot * (1 - lam)
    return out, target_reweighted


def get_lambda(alpha=1.0):
    if alpha > 0.:
        lam = np.random.beta(alpha, alpha)
    else:
        lam = 1.
    return lam


# ---------------------------------------------------------- modules/cutmix.py
class CutMix(object):
    """
    The following code was implemented by the authors of CutMix paper.
    https://arxiv.org/abs/1905.04899
    following is the the link to the official implementation of CutMix.
    https://github.com/clovaai/CutMix-PyTorch/blob/master/train.py
    """
    def __init__(self, beta):
        self.beta = beta

    def rand_bbox(self, size, lam):
        W = size[2]
        H = size[3]
        cut_rat = np.sqrt(1. - lam)
        cut_w = int(W * cut_rat)  # [changed] np.int -> int
        cut_h = int(H * cut_rat)  # [changed] np.int -> int

        # uniform
        cx = np.random.randint(W)
        cy = np.random.randint(H)

        bbx1 = np.clip(cx - cut_w // 2, 0, W)
        bby1 = np.clip(cy - cut_h // 2, 0, H)
        bbx2 = np.clip(cx + cut_w // 2, 0, W)
        bby2 = np.clip(cy + cut_h // 2, 0, H)

        return bbx1, bby1, bbx2, bby2

    def apply(self, inputs, target):
        lam = np.random.beta(self.beta, self.beta)
        rand_index = torch.randperm(inputs.size()[0]).to(device)
        target_a = target
        target_b = target[rand_index]
        bbx1, bby1, bbx2, bby2 = self.rand_bbox(inputs.size(), lam)
        inputs[:, :, bbx1:bbx2, bby1:bby2] = inputs[rand_index, :, bbx1:bbx2, bby1:bby2]
        # adjust lambda to exactly match pixel ratio
        lam = 1 - ((bbx2 - bbx1) * (bby2 - bby1) / (inputs.size()[-1] * inputs.size()[-2]))
        # compute output
        return target_a, target_b, inputs, lam


# --------------------------------------------------------- modules/patchup.py
class PatchUpMode(Enum):
    SOFT = 'soft'
    HARD = 'hard'


class PatchUp(nn.Module):
    """
    PatchUp Module.

    This module is responsible for applying either Soft PatchUp or Hard PatchUp after a Convolutional module
    or convolutional residual block.
    """
    def __init__(self, block_size=7, gamma=0.9, patchup_type=PatchUpMode.SOFT):
        super(PatchUp, self).__init__()
        self.patchup_type = patchup_type
        self.block_size = block_size
        self.gamma = gamma
        self.gamma_adj = None
        self.kernel_size = (block_size, block_size)
        self.stride = (1, 1)
        self.padding = (block_size // 2, block_size // 2)
        self.computed_lam = None

    def adjust_gamma(self, x):
        return self.gamma * x.shape[-1] ** 2 / \
               (self.block_size ** 2 * (x.shape[-1] - self.block_size + 1) ** 2)

    def forward(self, x, targets=None, lam=None, patchup_type=PatchUpMode.SOFT):
        self.patchup_type = patchup_type
        if type(self.training) == type(None):
            Exception("model's mode is not set in to neither training nor testing mode")
        if not self.training:
            # if the model is at the inference time (evaluation or test), we are not applying patchUp.
            return x, targets

        if type(lam) == type(None):
            # if we are not using fixed lambda, we should sample from the Beta distribution with fixed alpha equal to 2.
            # lambda will be a float number in range [0, 1].
            lam = np.random.beta(2.0, 2.0)

        if self.gamma_adj is None:
            self.gamma_adj = self.adjust_gamma(x)
        p = torch.ones_like(x[0]) * self.gamma_adj
        m_i_j = torch.bernoulli(p)
        mask_shape = len(m_i_j.shape)

        m_i_j = m_i_j.expand(x.size(0), m_i_j.size(0), m_i_j.size(1), m_i_j.size(2))

        holes = F.max_pool2d(m_i_j, self.kernel_size, self.stride, self.padding)

        mask = 1 - holes
        unchanged = mask * x
        if mask_shape == 1:
            total_feats = x.size(1)
        else:
            total_feats = x.size(1) * (x.size(2) ** 2)
        total_changed_pixels = holes[0].sum()
        total_changed_portion = total_changed_pixels / total_feats
        total_unchanged_portion = (total_feats - total_changed_pixels) / total_feats
        indices = np.random.permutation(x.size(0))
        target_shuffled_onehot = targets[indices]
        patches = None
        target_reweighted = None
        target_b = None
        if self.patchup_type == PatchUpMode.SOFT:
            target_reweighted = total_unchanged_portion * targets +  lam * total_changed_portion * targets + \
                                target_shuffled_onehot * (1 - lam) * total_changed_portion
            patches = holes * x
            patches = patches * lam + patches[indices] * (1 - lam)
            target_b = lam * targets + (1 - lam) * target_shuffled_onehot
        elif self.patchup_type == PatchUpMode.HARD:
            target_reweighted = total_unchanged_portion * targets + total_changed_portion * target_shuffled_onehot
            patches = holes * x
            patches = patches[indices]
            target_b = targets[indices]
        x = unchanged + patches
        target_a = targets
        return target_a, target_b, target_reweighted, x, total_unchanged_portion


# ---------------------------------------------------------- models/preresnet.py
class PreActBlock(nn.Module):
    '''Pre-activation version of the BasicBlock.'''
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super(PreActBlock, self).__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)

        if stride != 1 or in_planes != self.expansion*planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion*planes, kernel_size=1, stride=stride, bias=False)
            )

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, 'shortcut') else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


class PreActResNet(nn.Module):
    """
    In this implementation PreActResNet consist of a Convolutional module followed
    by 4 residual blocks and a fully connected layer for classification.
    """
    # [changed] the DropBlock module and per-image standardisation are left out.
    def __init__(self, block, num_blocks, initial_channels, num_classes, per_img_std=False, stride=1, drop_block=7,
                 keep_prob=.9, gamma=.9, patchup_block=7):
        super(PreActResNet, self).__init__()
        self.in_planes = initial_channels
        self.num_classes = num_classes
        self.per_img_std = per_img_std
        self.keep_prob = keep_prob
        self.gamma = gamma
        self.patchup_block = patchup_block
        self.conv1 = nn.Conv2d(3, initial_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.patchup_0 = PatchUp(block_size=self.patchup_block, gamma=self.gamma)
        self.layer1 = self._make_layer(block, initial_channels, num_blocks[0], stride=1)
        self.patchup_1 = PatchUp(block_size=self.patchup_block, gamma=self.gamma)
        self.layer2 = self._make_layer(block, initial_channels*2, num_blocks[1], stride=2)
        self.patchup_2 = PatchUp(block_size=5, gamma=self.gamma)
        self.layer3 = self._make_layer(block, initial_channels*4, num_blocks[2], stride=2)
        self.patchup_3 = PatchUp(block_size=3, gamma=self.gamma)
        self.layer4 = self._make_layer(block, initial_channels*8, num_blocks[3], stride=2)
        self.patchup_4 = PatchUp(block_size=3, gamma=self.gamma)
        self.linear = nn.Linear(initial_channels*8*block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1]*(num_blocks-1)
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x, target= None, mixup=False, manifold_mixup=False, alpha=None,
                lam=None,
                patchup=False, dropblock=False, epoch=None, patchup_type=PatchUpMode.SOFT, k=2, dropblock_all=False):
        # [changed] the dropblock branches are left out (dropblock=False throughout).
        lam_value = None

        if manifold_mixup or patchup:
            layer_mix = random.randint(0, k)
        elif mixup:
            layer_mix = 0
        else:
            layer_mix = None

        out = x

        if alpha is not None and type(lam_value) == type(None):
            lam_value = get_lambda(alpha)
            lam_value = torch.from_numpy(np.array([lam_value]).astype('float32')).to(device)
            lam_value = Variable(lam_value)

        if target is not None:
            target_reweighted = to_one_hot(target, self.num_classes)

        if layer_mix == 0 and patchup:
            cutmix = CutMix(beta=1.)
            target_a, target_b, out, portion = cutmix.apply(inputs=out, target=target)
            target_a = to_one_hot(target_a, self.num_classes)
            target_b = to_one_hot(target_b, self.num_classes)
            target_reweighted = portion * target_a + (1.0 - portion) * target_b

        elif layer_mix == 0 and not patchup:
            out, target_reweighted = mixup_process(out, target_reweighted, lam=lam_value)

        out = self.conv1(out)

        if not patchup and not dropblock and (layer_mix == 1 and layer_mix <= k):
            out, target_reweighted = mixup_process(out, target_reweighted, lam=lam_value)
        elif patchup and (layer_mix == 1 and layer_mix <= k):
            target_a, target_b, target_reweighted, out, portion = self.patchup_0(out, target_reweighted, lam=lam_value,
                                                                                 patchup_type=patchup_type)

        out = self.layer1(out)

        if not patchup and not dropblock and layer_mix == 2 and layer_mix <= k:
            out, target_reweighted = mixup_process(out, target_reweighted, lam=lam_value)
        elif patchup and layer_mix == 2 and layer_mix <= k:
            target_a, target_b, target_reweighted, out, portion = self.patchup_0(out, target_reweighted, lam=lam_value,
                                                                                 patchup_type=patchup_type)

        out = self.layer2(out)

        if not patchup and not dropblock and layer_mix == 3 and layer_mix <= k:
            out, target_reweighted = mixup_process(out, target_reweighted, lam=lam_value)
        elif patchup and layer_mix == 3 and layer_mix <= k:
            target_a, target_b, target_reweighted, out, portion = self.patchup_0(out, target_reweighted, lam=lam_value,
                                                                                 patchup_type=patchup_type)

        out = self.layer3(out)

        if not patchup and not dropblock and layer_mix == 4 and layer_mix <= k:
            out, target_reweighted = mixup_process(out, target_reweighted, lam=lam_value)
        elif patchup and layer_mix == 4 and layer_mix <= k:
            target_a, target_b, target_reweighted, out, portion = self.patchup_0(out, target_reweighted, lam=lam_value,
                                                                                 patchup_type=patchup_type)

        out = self.layer4(out)
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        out = self.linear(out)

        if target is not None:
            if patchup:
                return target_a, target_b, target_reweighted, out, portion
            return out, target_reweighted
        else:
            return out


def preactresnet18(num_classes=10, dropout = False, per_img_std = False, stride=1, drop_block=7, keep_prob=.9,
                   gamma=.9, patchup_block=7, patchup_prob=.7):
    return PreActResNet(PreActBlock, [2,2,2,2], 64, num_classes, per_img_std, stride= stride, drop_block=drop_block,
                        keep_prob=keep_prob, gamma=gamma, patchup_block=patchup_block)


# -------------------------------------------------------------- main.py train()
bce_loss = nn.BCELoss().to(device)
softmax = nn.Softmax(dim=1).to(device)


def make_optimizer(net, learning_rate=0.1, momentum=0.9, decay=0.0001):
    """[changed] main.py's optimizer with its default flags."""
    return torch.optim.SGD(net.parameters(), learning_rate, momentum=momentum,
                           weight_decay=decay, nesterov=True)


def train_step(model, optimizer, input, target, train='patchup', patchup_type=PatchUpMode.SOFT,
               patchup_prob=.7, alpha=2.0, k=2, loss_params=(1, 1), cutmix_prob=.5, num_classes=10):
    """[changed] One iteration of main.py's `train()` loop (model in train mode).

    The branches are main.py's for `--train vanilla | mixup | manifold_mixup |
    patchup | cutmix`. Returns `(loss.item(), prec1.item())`, as the loop
    records them (a host sync per step, as in the original).
    """
    loss_alpha, loss_beta = loss_params[0], loss_params[1]
    lam = None
    target = target.long()
    input, target = input.to(device), target.to(device)
    if train == 'mixup':
        input_var, target_var = Variable(input), Variable(target)
        output, reweighted_target = model(input_var, target_var, mixup=True, alpha=alpha)
        loss = bce_loss(softmax(output), reweighted_target)
    elif train == 'patchup':
        input_var, target_var = Variable(input), Variable(target)

        r = np.random.rand(1)
        if r < patchup_prob:
            target_a, target_b, target_reweighted, output, portion = model(input_var, target_var,
                                                                           lam=lam,
                                                                           patchup=True,
                                                                           patchup_type=patchup_type, k=k)

            target_a_var = torch.autograd.Variable(target_a)
            target_b_var = torch.autograd.Variable(target_b)

            loss = loss_alpha * bce_loss(softmax(output), target_a_var) * \
                   portion + bce_loss(softmax(output), target_b_var) * (1. - portion) + \
                   loss_beta * bce_loss(softmax(output), target_reweighted)
        else:
            input_var, target_var = Variable(input), Variable(target)
            output, reweighted_target = model(input_var, target_var)
            loss = bce_loss(softmax(output), reweighted_target)
    elif train == 'manifold_mixup':
        input_var, target_var = Variable(input), Variable(target)
        output, reweighted_target = model(input_var, target_var, manifold_mixup=True,
                                          alpha=alpha,
                                          lam=lam, k=k)
        loss = bce_loss(softmax(output), reweighted_target)
    elif train == 'vanilla':
        input_var, target_var = Variable(input), Variable(target)
        output, reweighted_target = model(input_var, target_var)
        loss = bce_loss(softmax(output), reweighted_target)
    elif train == 'cutmix':
        r = np.random.rand(1)
        if r < cutmix_prob:
            cutmix = CutMix(beta=1.)
            target_a, target_b, input, lam = cutmix.apply(inputs=input, target=target)
            target_a = to_one_hot(target_a, num_classes)
            target_b = to_one_hot(target_b, num_classes)
            input_var = torch.autograd.Variable(input, requires_grad=True)
            target_a_var = torch.autograd.Variable(target_a)
            target_b_var = torch.autograd.Variable(target_b)
            output = model(input_var)
            loss = bce_loss(softmax(output), target_a_var) * lam + bce_loss(softmax(output), target_b_var) * (
                    1. - lam)
        else:
            input_var, target_var = Variable(input), Variable(target)
            output, reweighted_target = model(input_var, target_var)
            loss = bce_loss(softmax(output), reweighted_target)
    else:
        raise ValueError(f"unsupported train mode {train!r}")  # [changed]

    # measure accuracy and record loss
    prec1, prec5 = accuracy(output, target, topk=(1, 5))
    loss_value, prec1_value = loss.item(), prec1.item()

    # compute gradient and do SGD step
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss_value, prec1_value
