"""Train the paper's latent consistency model on CelebA-HQ 256 (table 1a: 1-NFE FID 7.27).

The paper's settings: 256x256 images -> 32x32x4 latents of stabilityai/sd-vae-ft-ema, batch 128,
1400 epochs, the celeba256 NsLN UNet, Cauchy loss, diffusion loss (r = 0.25), minibatch OT,
adaptive c, RAdam 1e-4, EMA 0.99993; 2-step sampling at grid level 440.

    KERAS_BACKEND=torch python recipes/celeba.py --images celeba_hq_256/ --vae sd-vae-ft-ema/
    KERAS_BACKEND=jax python recipes/celeba.py --smoke      # the whole path in a minute, no downloads

All options: `python recipes/celeba.py --help` (the shared entry point is latent_training.py).
"""

from latent_training import main

if __name__ == "__main__":
    main("celeba")
