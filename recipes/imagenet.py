"""Train a class-conditional latent consistency model on ImageNet 256 with a DiT (the authors' next step).

The paper's table trains unconditional UNets; the authors' code has moved on to class-conditional
transformers. This recipe trains on a class-per-folder ImageNet: 256x256 images (ADM's center crop)
-> 32x32x4 latents of stabilityai/sd-vae-ft-ema -> a DiT-B/2 that takes the class label, with the
paper's objective (Cauchy loss, diffusion loss, curriculum, adaptive c) and the authors' ImageNet
settings where their scripts give them (1000 classes, batch 640, 140 epochs, minibatch OT off;
docs/reference.md "ImageNet"). 10% of the labels are dropped to the null class in training, so the
model samples with and without labels. `--ot` pairs noise with data by minibatch OT within each class.

    KERAS_BACKEND=torch python recipes/imagenet.py --images imagenet/train/ --vae sd-vae-ft-ema/
    KERAS_BACKEND=jax python recipes/imagenet.py --smoke     # generated images in 3 classes, no downloads
    KERAS_BACKEND=jax python recipes/sample.py --model runs/imagenet/lct.keras --vae sd-vae-ft-ema/ \
        --labels 207 360 387 974 88 979 417 279 --out grid.png

`--network` takes any other preset (DiT-XL/2, DiT-L/2, a UNet, ...). All options:
`python recipes/imagenet.py --help` (the shared entry point is latent_training.py).
"""

from latent_training import main

if __name__ == "__main__":
    main("imagenet")
