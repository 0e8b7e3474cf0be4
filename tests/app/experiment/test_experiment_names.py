"""Experiment names, per method and option, as the trainer has always written them.

Existing folders, `patchup-sweep` and `patchup-compare` find runs by these names,
so they are pinned here: every method, with the paper's options, with each option
changed alone, with all changed, and with the run flags that enter the name.
"""

import shlex

import pytest

from patchup_tf.app.experiment import config as flags
from patchup_tf.rules import METHODS

EPOCHS = ["--epochs", "3"]
# RUN in a key: the run flags that enter the name
RUN = "--dataset svhn --arch wrn28_10 --mix_off_epoch 2 --add_name x --job_id 7 --seed 3 --batch_size 50"
# argv (after EPOCHS) -> the experiment name
NAMES = {
    '--method vanilla':
        ('cifar10_arch_preactresnet18_train_vanilla_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0'),
    '--method vanilla --loss ce':
        ('cifar10_arch_preactresnet18_train_vanilla_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_loss_ce'),
    '--method vanilla --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_vanilla_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_label_smoothing_0.1'),
    '--method vanilla --pairing global':
        ('cifar10_arch_preactresnet18_train_vanilla_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_pairing_global'),
    '--method vanilla RUN':
        ('svhn_arch_wrn28_10_train_vanilla_m_alpha_0.0_eph_3_bs_50_lr_0.1_mom_0.9_decay_0.'
         '0001_seed_3_add_name_x_mix_off_epoch_2_job_id_7'),
    '--method vanilla --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_vanilla_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_loss_ce_label_smoothing_0.1_pairing_global'),
    '--method mixup':
        ('cifar10_arch_preactresnet18_train_mixup_m_alpha_1.0_eph_3_bs_100_lr_0.1_mom_0.9_'
         'decay_0.0001_seed_0'),
    '--method mixup --alpha 0.5':
        ('cifar10_arch_preactresnet18_train_mixup_m_alpha_0.5_eph_3_bs_100_lr_0.1_mom_0.9_'
         'decay_0.0001_seed_0'),
    '--method mixup --per_sample True':
        ('cifar10_arch_preactresnet18_train_mixup_m_alpha_1.0_eph_3_bs_100_lr_0.1_mom_0.9_'
         'decay_0.0001_seed_0_per_sample'),
    '--method mixup --loss ce':
        ('cifar10_arch_preactresnet18_train_mixup_m_alpha_1.0_eph_3_bs_100_lr_0.1_mom_0.9_'
         'decay_0.0001_seed_0_loss_ce'),
    '--method mixup --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_mixup_m_alpha_1.0_eph_3_bs_100_lr_0.1_mom_0.9_'
         'decay_0.0001_seed_0_label_smoothing_0.1'),
    '--method mixup --pairing global':
        ('cifar10_arch_preactresnet18_train_mixup_m_alpha_1.0_eph_3_bs_100_lr_0.1_mom_0.9_'
         'decay_0.0001_seed_0_pairing_global'),
    '--method mixup RUN':
        ('svhn_arch_wrn28_10_train_mixup_m_alpha_1.0_eph_3_bs_50_lr_0.1_mom_0.9_decay_0.00'
         '01_seed_3_add_name_x_mix_off_epoch_2_job_id_7'),
    '--method mixup --alpha 0.5 --per_sample True --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_mixup_m_alpha_0.5_eph_3_bs_100_lr_0.1_mom_0.9_'
         'decay_0.0001_seed_0_loss_ce_per_sample_label_smoothing_0.1_pairing_global'),
    '--method manifold_mixup':
        ('cifar10_arch_preactresnet18_train_manifold_mixup_m_alpha_1.5_eph_3_bs_100_lr_0.1'
         '_mom_0.9_decay_0.0001_seed_0_k_2'),
    '--method manifold_mixup --alpha 0.5':
        ('cifar10_arch_preactresnet18_train_manifold_mixup_m_alpha_0.5_eph_3_bs_100_lr_0.1'
         '_mom_0.9_decay_0.0001_seed_0_k_2'),
    '--method manifold_mixup --k 1':
        ('cifar10_arch_preactresnet18_train_manifold_mixup_m_alpha_1.5_eph_3_bs_100_lr_0.1'
         '_mom_0.9_decay_0.0001_seed_0_k_1'),
    '--method manifold_mixup --per_sample True':
        ('cifar10_arch_preactresnet18_train_manifold_mixup_m_alpha_1.5_eph_3_bs_100_lr_0.1'
         '_mom_0.9_decay_0.0001_seed_0_k_2_per_sample'),
    '--method manifold_mixup --loss ce':
        ('cifar10_arch_preactresnet18_train_manifold_mixup_m_alpha_1.5_eph_3_bs_100_lr_0.1'
         '_mom_0.9_decay_0.0001_seed_0_k_2_loss_ce'),
    '--method manifold_mixup --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_manifold_mixup_m_alpha_1.5_eph_3_bs_100_lr_0.1'
         '_mom_0.9_decay_0.0001_seed_0_k_2_label_smoothing_0.1'),
    '--method manifold_mixup --pairing global':
        ('cifar10_arch_preactresnet18_train_manifold_mixup_m_alpha_1.5_eph_3_bs_100_lr_0.1'
         '_mom_0.9_decay_0.0001_seed_0_k_2_pairing_global'),
    '--method manifold_mixup RUN':
        ('svhn_arch_wrn28_10_train_manifold_mixup_m_alpha_1.5_eph_3_bs_50_lr_0.1_mom_0.9_d'
         'ecay_0.0001_seed_3_add_name_x_k_2_mix_off_epoch_2_job_id_7'),
    '--method manifold_mixup --alpha 0.5 --k 1 --per_sample True --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_manifold_mixup_m_alpha_0.5_eph_3_bs_100_lr_0.1'
         '_mom_0.9_decay_0.0001_seed_0_k_1_loss_ce_per_sample_label_smoothing_0.1_pairing_'
         'global'),
    '--method cutout':
        ('cifar10_arch_preactresnet18_train_cutout_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutout_16'),
    '--method cutout --cutout 12':
        ('cifar10_arch_preactresnet18_train_cutout_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutout_12'),
    '--method cutout --loss ce':
        ('cifar10_arch_preactresnet18_train_cutout_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutout_16_loss_ce'),
    '--method cutout --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_cutout_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutout_16_label_smoothing_0.1'),
    '--method cutout --pairing global':
        ('cifar10_arch_preactresnet18_train_cutout_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutout_16_pairing_global'),
    '--method cutout RUN':
        ('svhn_arch_wrn28_10_train_cutout_m_alpha_0.0_eph_3_bs_50_lr_0.1_mom_0.9_decay_0.0'
         '001_seed_3_add_name_x_cutout_20_mix_off_epoch_2_job_id_7'),
    '--method cutout --cutout 12 --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_cutout_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutout_12_loss_ce_label_smoothing_0.1_pairing_global'),
    '--method cutmix':
        ('cifar10_arch_preactresnet18_train_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutmix_prob_0.4'),
    '--method cutmix --cutmix_prob 0.5':
        ('cifar10_arch_preactresnet18_train_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutmix_prob_0.5'),
    '--method cutmix --per_sample True':
        ('cifar10_arch_preactresnet18_train_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutmix_prob_0.4_per_sample'),
    '--method cutmix --loss ce':
        ('cifar10_arch_preactresnet18_train_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutmix_prob_0.4_loss_ce'),
    '--method cutmix --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutmix_prob_0.4_label_smoothing_0.1'),
    '--method cutmix --pairing global':
        ('cifar10_arch_preactresnet18_train_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutmix_prob_0.4_pairing_global'),
    '--method cutmix RUN':
        ('svhn_arch_wrn28_10_train_cutmix_m_alpha_0.0_eph_3_bs_50_lr_0.1_mom_0.9_decay_0.0'
         '001_seed_3_add_name_x_cutmix_prob_0.4_mix_off_epoch_2_job_id_7'),
    '--method cutmix --cutmix_prob 0.5 --per_sample True --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0.9'
         '_decay_0.0001_seed_0_cutmix_prob_0.5_loss_ce_per_sample_label_smoothing_0.1_pair'
         'ing_global'),
    '--method dropblock':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_2_dropblock_all_True_keep_prob_0.9_drop_block_7'),
    '--method dropblock --drop_block 5':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_2_dropblock_all_True_keep_prob_0.9_drop_block_5'),
    '--method dropblock --keep_prob 0.8':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_2_dropblock_all_True_keep_prob_0.8_drop_block_7'),
    '--method dropblock --drop_block_all False':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_2_dropblock_all_False_keep_prob_0.9_drop_block_7'),
    '--method dropblock --k 1':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_1_dropblock_all_True_keep_prob_0.9_drop_block_7'),
    '--method dropblock --per_sample True':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_2_dropblock_all_True_keep_prob_0.9_drop_block_7_per_sa'
         'mple'),
    '--method dropblock --loss ce':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_2_dropblock_all_True_keep_prob_0.9_drop_block_7_loss_c'
         'e'),
    '--method dropblock --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_2_dropblock_all_True_keep_prob_0.9_drop_block_7_label_'
         'smoothing_0.1'),
    '--method dropblock --pairing global':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_2_dropblock_all_True_keep_prob_0.9_drop_block_7_pairin'
         'g_global'),
    '--method dropblock RUN':
        ('svhn_arch_wrn28_10_train_dropblock_m_alpha_0.0_eph_3_bs_50_lr_0.1_mom_0.9_decay_'
         '0.0001_seed_3_add_name_x_k_2_dropblock_all_True_keep_prob_0.9_drop_block_7_mix_o'
         'ff_epoch_2_job_id_7'),
    '--method dropblock --drop_block 5 --keep_prob 0.8 --drop_block_all False --k 1 --per_sample True --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_dropblock_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_'
         '0.9_decay_0.0001_seed_0_k_1_dropblock_all_False_keep_prob_0.8_drop_block_5_loss_'
         'ce_per_sample_label_smoothing_0.1_pairing_global'),
    '--method soft_patchup':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75'),
    '--method soft_patchup --alpha 0.5':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_0.5_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75'),
    '--method soft_patchup --patchup_prob 0.5':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.5_patchup_mode_soft_gam'
         'ma_0.75'),
    '--method soft_patchup --patchup_block 5':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_5_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75'),
    '--method soft_patchup --k 1':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_1_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75'),
    '--method soft_patchup --loss_params 2.0 0.5':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75_loss_params_2.0_0.5'),
    '--method soft_patchup --per_sample True':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75_per_sample'),
    '--method soft_patchup --gamma 0.6':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.6'),
    '--method soft_patchup --loss ce':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75_loss_ce'),
    '--method soft_patchup --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75_label_smoothing_0.1'),
    '--method soft_patchup --pairing global':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75_pairing_global'),
    '--method soft_patchup RUN':
        ('svhn_arch_wrn28_10_train_patchup_m_alpha_2.0_eph_3_bs_50_lr_0.1_mom_0.9_decay_0.'
         '0001_seed_3_add_name_x_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_ga'
         'mma_0.75_mix_off_epoch_2_job_id_7'),
    '--method soft_patchup --alpha 0.5 --patchup_prob 0.5 --patchup_block 5 --k 1 --loss_params 2.0 0.5 --per_sample True --gamma 0.6 --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_0.5_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_1_patchup_block_5_patchup_prob_0.5_patchup_mode_soft_gam'
         'ma_0.6_loss_params_2.0_0.5_loss_ce_per_sample_label_smoothing_0.1_pairing_global'),
    '--method hard_patchup':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5'),
    '--method hard_patchup --alpha 0.5':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_0.5_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5'),
    '--method hard_patchup --patchup_prob 0.5':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.5_patchup_mode_hard_gam'
         'ma_0.5'),
    '--method hard_patchup --patchup_block 5':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_5_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5'),
    '--method hard_patchup --k 1':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_1_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5'),
    '--method hard_patchup --loss_params 2.0 0.5':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5_loss_params_2.0_0.5'),
    '--method hard_patchup --per_sample True':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5_per_sample'),
    '--method hard_patchup --gamma 0.6':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.6'),
    '--method hard_patchup --loss ce':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5_loss_ce'),
    '--method hard_patchup --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5_label_smoothing_0.1'),
    '--method hard_patchup --pairing global':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5_pairing_global'),
    '--method hard_patchup RUN':
        ('svhn_arch_wrn28_10_train_patchup_m_alpha_2.0_eph_3_bs_50_lr_0.1_mom_0.9_decay_0.'
         '0001_seed_3_add_name_x_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_ga'
         'mma_0.5_mix_off_epoch_2_job_id_7'),
    '--method hard_patchup --alpha 0.5 --patchup_prob 0.5 --patchup_block 5 --k 1 --loss_params 2.0 0.5 --per_sample True --gamma 0.6 --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_0.5_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_1_patchup_block_5_patchup_prob_0.5_patchup_mode_hard_gam'
         'ma_0.6_loss_params_2.0_0.5_loss_ce_per_sample_label_smoothing_0.1_pairing_global'),
    '--method mixup_cutmix':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_mixup_alpha_0.8_cutmix_alpha_1.0_switch_prob_0.5_prob'
         '_1.0'),
    '--method mixup_cutmix --mixup_alpha 0.4':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_mixup_alpha_0.4_cutmix_alpha_1.0_switch_prob_0.5_prob'
         '_1.0'),
    '--method mixup_cutmix --cutmix_alpha 0.7':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_mixup_alpha_0.8_cutmix_alpha_0.7_switch_prob_0.5_prob'
         '_1.0'),
    '--method mixup_cutmix --switch_prob 0.3':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_mixup_alpha_0.8_cutmix_alpha_1.0_switch_prob_0.3_prob'
         '_1.0'),
    '--method mixup_cutmix --prob 0.9':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_mixup_alpha_0.8_cutmix_alpha_1.0_switch_prob_0.5_prob'
         '_0.9'),
    '--method mixup_cutmix --per_sample True':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_mixup_alpha_0.8_cutmix_alpha_1.0_switch_prob_0.5_prob'
         '_1.0_per_sample'),
    '--method mixup_cutmix --loss ce':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_loss_ce_mixup_alpha_0.8_cutmix_alpha_1.0_switch_prob_'
         '0.5_prob_1.0'),
    '--method mixup_cutmix --label_smoothing 0.1':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_mixup_alpha_0.8_cutmix_alpha_1.0_switch_prob_0.5_prob'
         '_1.0_label_smoothing_0.1'),
    '--method mixup_cutmix --pairing global':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_mixup_alpha_0.8_cutmix_alpha_1.0_switch_prob_0.5_prob'
         '_1.0_pairing_global'),
    '--method mixup_cutmix RUN':
        ('svhn_arch_wrn28_10_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_50_lr_0.1_mom_0.9_dec'
         'ay_0.0001_seed_3_add_name_x_mixup_alpha_0.8_cutmix_alpha_1.0_switch_prob_0.5_pro'
         'b_1.0_mix_off_epoch_2_job_id_7'),
    '--method mixup_cutmix --mixup_alpha 0.4 --cutmix_alpha 0.7 --switch_prob 0.3 --prob 0.9 --per_sample True --loss ce --label_smoothing 0.1 --pairing global':
        ('cifar10_arch_preactresnet18_train_mixup_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_m'
         'om_0.9_decay_0.0001_seed_0_loss_ce_mixup_alpha_0.4_cutmix_alpha_0.7_switch_prob_'
         '0.3_prob_0.9_per_sample_label_smoothing_0.1_pairing_global'),
    '--train patchup --patchup_type hard':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_0.7_patchup_mode_hard_gam'
         'ma_0.5'),
    '--train patchup --patchup_type soft --alpha 2.0 --loss_params 1.0 1.0':
        ('cifar10_arch_preactresnet18_train_patchup_m_alpha_2.0_eph_3_bs_100_lr_0.1_mom_0.'
         '9_decay_0.0001_seed_0_k_2_patchup_block_7_patchup_prob_1.0_patchup_mode_soft_gam'
         'ma_0.75'),
    '--arch keras:ResNet50V2 --image_size 64 --method cutmix':
        ('cifar10_arch_keras-ResNet50V2_train_cutmix_m_alpha_0.0_eph_3_bs_100_lr_0.1_mom_0'
         '.9_decay_0.0001_seed_0_image_size_64_cutmix_prob_0.4'),
}


@pytest.mark.parametrize("argv", sorted(NAMES))
def test_experiment_name_is_unchanged(argv):
    tokens = EPOCHS + shlex.split(argv.replace("RUN", RUN))
    args = flags.build_parser().parse_args(tokens)
    method = flags.resolve_method(args)
    epochs = flags.resolve_schedule(args)[0]
    assert flags.experiment_name(args, method, epochs) == NAMES[argv]


def test_every_method_is_pinned():
    pinned = {shlex.split(argv)[1] for argv in NAMES if argv.startswith("--method")}
    assert pinned == set(METHODS)
