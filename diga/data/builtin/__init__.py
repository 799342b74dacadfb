"""The built-in benchmark: procedural street scenes in two domains.

Both domains share one scene grammar (a street in perspective: road, sidewalks, facades with
windows, trees, poles with lights and signs, vehicles, people) and the 19 Cityscapes classes,
so their class statistics agree. They differ in appearance, the way a game differs from a car
camera: ``source`` is a clean render (flat colours, faint texture, constant light, no noise);
``target`` shifts each class's hue / saturation / value systematically, adds fine surface
textures, uneven light (brightness, contrast, colour cast, vignette, a light gradient, cast
shadows) and camera blur and noise. Shapes and context stay the same, so the gap can be closed.

Every image comes from its own generator, ``np.random.default_rng([seed, domain, split,
index])``, so any image can be made lazily, in any order, in any DataLoader worker.

The package: ``spec`` (what it holds), ``palette`` (classes, colours, the target's look),
``canvas`` (painting, noise), ``street`` / ``objects`` / ``scene`` (the grammar and the
renderer), ``files`` (the on-disk layouts).
"""

from diga.data.builtin.files import write_demo
from diga.data.builtin.scene import generate_scene
from diga.data.builtin.spec import DOMAINS, SPLITS, BuiltinSpec

__all__ = ["DOMAINS", "SPLITS", "BuiltinSpec", "generate_scene", "write_demo"]
