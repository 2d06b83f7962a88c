"""Synthetic Happywhale data (`whaleid synth`): individuals with persistent markings photographed at sea.

    species.py      species names, body shapes, colours
    shapes.py       canonical outlines with the marked (notched) edge
    individuals.py  persistent markings of one individual
    render.py       one photo: pose, sea, occlusion, light, blur, noise
    styles.py       rendering styles (photo, grey, overcast, textured, random) as data
    sea.py          the sea behind the animal: today's, or a style's palette / texture
    textures.py     procedural sea textures: fractal swell, wave streaks, sun glitter, cloudy sky
    camera.py       a style's tone (contrast, saturation, haze) and camera effects (vignette, blur, noise, grey)
    boxes.py        simulated detectors (fullbody: tight; yolov5: loose, sometimes missing)
    plan.py         photos per individual (long tail) and the train/test split with new individuals
    writer.py       generate(): the Kaggle layout on disk
"""

from training.synth.render import Nuisance
from training.synth.styles import STYLE_NAMES, Style
from training.synth.writer import NEW_INDIVIDUAL, generate

__all__ = ["generate", "Nuisance", "NEW_INDIVIDUAL", "Style", "STYLE_NAMES"]
