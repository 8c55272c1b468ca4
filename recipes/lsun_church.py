"""Train the paper's latent consistency model on LSUN Church 256 (table 1b: 1-NFE FID 8.87).

The paper's settings: 256x256 images and their horizontally flipped copies -> 32x32x4 latents of
stabilityai/sd-vae-ft-ema, batch 256, 1800 epochs, the celeba256 NsLN UNet, Cauchy loss,
diffusion loss, minibatch OT, adaptive c, RAdam 1e-4, EMA 0.99993; 2-step sampling at grid level
420.

    KERAS_BACKEND=torch python recipes/lsun_church.py --images church_outdoor/ --vae sd-vae-ft-ema/

All options: `python recipes/lsun_church.py --help` (the shared entry point is latent_training.py).
"""

from latent_training import main

if __name__ == "__main__":
    main("lsun_church")
