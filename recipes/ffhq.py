"""Train the paper's latent consistency model on FFHQ 256 (table 1c: 1-NFE FID 8.72).

The paper's settings: 256x256 images -> 32x32x4 latents of stabilityai/sd-vae-ft-ema, global
batch 256 (2 x 128 in the authors' run), 1400 epochs, the celeba256 NsLN UNet, Cauchy loss,
diffusion loss, minibatch OT, adaptive c, RAdam 1e-4, EMA 0.99993.

    KERAS_BACKEND=torch python recipes/ffhq.py --images ffhq/ --vae sd-vae-ft-ema/

All options: `python recipes/ffhq.py --help` (the shared entry point is latent_training.py).
"""

from latent_training import main

if __name__ == "__main__":
    main("ffhq")
