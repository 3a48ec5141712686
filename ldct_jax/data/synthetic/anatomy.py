"""What each anatomy's slice contains: the drawing programs behind `phantoms.phantom`.

Coordinates are mm from the rotation axis, x to the patient's left (image right), y posterior
(image down). `t` in [0, 1] is the slice position within the anatomy's z range (chest: apex ->
diaphragm, abdomen: dome of the liver -> iliac crest, head: skull base -> vertex); organs appear,
grow and vanish with t. HU values: air -1000, lung -850 +/- (denser posteriorly), fat -100,
muscle 50, blood 40 (contrast: aorta 150-200), liver 60 (enhanced 100-120), bone cortex ~1000,
marrow ~250, brain grey 38 / white 28, CSF 8.
"""

from __future__ import annotations

import numpy as np

from ldct_jax.data.synthetic.shapes import Canvas, PatientRandom

TISSUES = dict(air=0, skin=1, fat=2, muscle=3, lung=4, blood=5, airway=6, heart=7, bone=8,
               marrow=9, liver=10, kidney=11, spleen=12, bowel=13, gas=14, lesion=15,
               grey=16, white=17, csf=18, cartilage=19, visceral=20, dura=21)
T = TISSUES
# Tissues whose interior is uniform soft tissue (for noise measurements).
SOFT_TISSUE = (T["muscle"], T["liver"], T["spleen"], T["heart"], T["grey"], T["white"])


def _g(t: float, centre: float, half_width: float) -> float:
    """A bump: 1 at `centre`, 0 beyond +/- half_width (organ size along z)."""
    x = (t - centre) / half_width
    return float(np.sqrt(max(0.0, 1.0 - x * x)))


def _ring(c: Canvas, cx, cy, a, b, wall, outer, inner, label_outer, label_inner,
          angle=0.0, harmonics=None, **kw):
    c.ellipse(cx, cy, a, b, outer, label_outer, angle, harmonics, **kw)
    if a > wall and b > wall:
        c.ellipse(cx, cy, a - wall, b - wall, inner, label_inner, angle, harmonics, **kw)


def _body(c: Canvas, r: PatientRandom, z: float, a: float, b: float, fat_mm: float,
          muscle_mm: float, cy: float = 0.0):
    """Skin, subcutaneous fat, muscle wall; the cavity inside is filled with (visceral) fat.

    Returns the cavity ellipse (cx, cy, a, b, harmonics).
    """
    harm = r.wobble("body", z, 0.035)
    c.ellipse(0.0, cy, a, b, 30.0, T["skin"], 0.0, harm)
    fat_harm = harm + r.wobble("fat", z, 0.15 * fat_mm / max(a, b))
    c.ellipse(0.0, cy, a - 1.5, b - 1.5, r.uniform("fat_hu", -115, -90), T["fat"], 0.0, fat_harm)
    ca, cb = a - 1.5 - fat_mm, b - 1.5 - fat_mm
    wall_harm = harm + r.wobble("wall", z, 0.03)
    c.ellipse(0.0, cy, ca, cb, r.uniform("muscle_hu", 42, 58), T["muscle"], 0.0, wall_harm)
    ca, cb = ca - muscle_mm, cb - muscle_mm
    c.ellipse(0.0, cy, ca, cb, r.uniform("visceral_hu", -105, -85), T["visceral"], 0.0,
              wall_harm)
    return 0.0, cy, ca, cb, wall_harm


def _spine(c: Canvas, r: PatientRandom, z: float, cx: float, cy: float, scale: float):
    """Vertebral body centred at (cx, cy), spinal canal and posterior elements behind it."""
    s = scale * (1.0 + r.smooth("vertebra", z, 0.03, 30.0))
    cortex, marrow = r.uniform("cortex_hu", 700, 1000), r.uniform("marrow_hu", 180, 300)
    for side in (-1, 1):   # paraspinal muscles
        c.ellipse(cx + side * 22 * s, cy + 32 * s, 17 * s, 16 * s, 50.0, T["muscle"],
                  side * 0.3, inside=(T["fat"], T["muscle"], T["skin"]))
    _ring(c, cx, cy, 19 * s, 15 * s, 1.8, cortex, marrow, T["bone"], T["marrow"])
    _ring(c, cx, cy + 24 * s, 11 * s, 10 * s, 2.5, cortex * 0.8, 12.0, T["bone"], T["csf"])
    c.ellipse(cx, cy + 44 * s, 3.5 * s, 12 * s, cortex * 0.7, T["bone"])   # spinous process
    for side in (-1, 1):   # laminae / transverse processes
        c.ellipse(cx + side * 17 * s, cy + 28 * s, 13 * s, 3.5 * s, cortex * 0.7, T["bone"],
                  side * -0.6)


def _ribs(c: Canvas, r: PatientRandom, z: float, cav, lateral_only: bool = False):
    """Rib cross-sections just outside the cavity; each rib shows where its oblique course
    crosses the slice, so ribs come and go with z (pitch ~ 25 mm)."""
    _, cy, ca, cb, _ = cav
    n = 14
    phi = np.linspace(-1.15, 1.35, n) + r.uniform("rib_jitter", -0.06, 0.06, n)
    phase = r.uniform("rib_phase", 0, 1, n)
    pitch = r.uniform("rib_pitch", 22, 30)
    cortex = r.uniform("rib_cortex", 800, 1100)
    for side in (-1, 1):
        for k in range(n):
            if lateral_only and not -0.3 < phi[k] < 1.2:
                continue
            if (z / pitch + 0.5 * phi[k] + phase[k] + (side > 0) * 0.37) % 1.0 > 0.45:
                continue
            ang = phi[k] if side > 0 else np.pi - phi[k]
            x, y = (ca + 5) * np.cos(ang), cy + (cb + 5) * np.sin(ang)
            tangent = np.arctan2((cb + 5) * np.cos(ang), -(ca + 5) * np.sin(ang))
            if phi[k] < -0.75:     # costal cartilage near the sternum
                c.ellipse(x, y, 7.5, 4.5, 120.0, T["cartilage"], tangent)
            else:
                _ring(c, x, y, 7.0, 4.5, 1.3, cortex, 250.0, T["bone"], T["marrow"], tangent)


def _tubes(c: Canvas, r: PatientRandom, name: str, z: float, n: int, host, z_span: float,
           radius, value, label, inside, slope_mm: float = 0.7, wall=None):
    """Tilted 3D tubes (vessels, airways, bowel) inside a host ellipse (cx, cy, a, b).

    Each tube has a random start in the host's unit disk, a direction, a z extent and a radius;
    its cross-section at z is an ellipse elongated along the tilt. `radius(d)` maps the start's
    distance from the host's centre-line (0..1) to a radius; `value` is an HU or a callable of the
    tube index; `wall` = (thickness mm, HU) draws a wall first.
    """
    cx, cy, a, b = host
    g = r.rng(name)
    rho, ang = np.sqrt(g.uniform(0, 1, n)), g.uniform(0, 2 * np.pi, n)
    u0, v0 = rho * np.cos(ang), rho * np.sin(ang)
    z0, half = g.uniform(-0.2, 1.2, n) * z_span, g.uniform(20, 70, n)
    slope = g.normal(0, slope_mm, (n, 2))
    radii = radius(rho, g.uniform(0, 1, n))
    for i in np.nonzero(np.abs(z - z0) < half)[0]:
        x = cx + u0[i] * a + slope[i, 0] * (z - z0[i])
        y = cy + v0[i] * b + slope[i, 1] * (z - z0[i])
        stretch = np.sqrt(1.0 + slope[i] @ slope[i])
        angle = np.arctan2(slope[i, 1], slope[i, 0])
        hu = value(i) if callable(value) else value
        if wall is not None:
            c.ellipse(x, y, radii[i] * stretch + wall[0], radii[i] + wall[0], wall[1], label,
                      angle, inside=inside)
            c.ellipse(x, y, radii[i] * stretch, radii[i], hu, label, angle,
                      inside=tuple(inside) + (label,))
        else:
            c.ellipse(x, y, radii[i] * stretch, radii[i], hu, label, angle, inside=inside)


def _spheres(c: Canvas, r: PatientRandom, name: str, z: float, n: int, host, z_range, radius,
             contrast, inside):
    """Lesions: spheres at random places of a host ellipse, drawn as contrast added to it."""
    cx, cy, a, b = host
    g = r.rng(name)
    for _ in range(n):
        rho, ang = 0.7 * np.sqrt(g.uniform()), g.uniform(0, 2 * np.pi)
        zc, rad, con = g.uniform(*z_range), g.uniform(*radius), contrast(g)
        d = rad * rad - (z - zc) ** 2
        if d > 0.5:
            c.ellipse(cx + rho * np.cos(ang) * a, cy + rho * np.sin(ang) * b, np.sqrt(d),
                      np.sqrt(d), con, T["lesion"], add=True, inside=inside)


def _trunk(c: Canvas, r: PatientRandom, z: float, a: tuple[float, float],
           b: tuple[float, float], fat_mm: tuple[float, float], wall_mm: tuple[float, float]):
    """`_body` with the patient's semi-axes, fat and wall drawn from these ranges (mm); the
    semi-axes breathe slightly with z. Returns (a, cavity)."""
    a = r.uniform("body_a", *a) * (1 + r.smooth("body_a", z, 0.02))
    b = r.uniform("body_b", *b) * (1 + r.smooth("body_b", z, 0.02))
    return a, _body(c, r, z, a, b, r.uniform("fat_mm", *fat_mm), r.uniform("wall_mm", *wall_mm),
                    cy=r.uniform("body_y", -6, 6))


def chest(c: Canvas, r: PatientRandom, z: float, t: float) -> None:
    a, cav = _trunk(c, r, z, (145, 170), (100, 122), (6, 22), (10, 16))
    _, cy, ca, cb, harm = cav
    size = 0.62 + 0.38 * min(1.0, t / 0.4)
    lung_hu = r.uniform("lung_hu", -880, -830)
    for side, name in ((-1, "right"), (1, "left")):
        lx, ly = side * 0.47 * ca, cy + 0.04 * cb
        la, lb = 0.46 * ca * (1.0 if side < 0 else 0.95), 0.86 * cb * size
        c.ellipse(lx, ly, la, lb, lung_hu, T["lung"], 0.0, r.wobble(f"lung_{name}", z, 0.06),
                  inside=(T["visceral"],))
        hilum = lambda rho, u, side=side: 0.6 + 3.2 * (1 - rho) ** 2 * (0.4 + 0.6 * u)
        _tubes(c, r, f"vessels_{name}", z, 260, (lx, ly, la, lb), 300.0, hilum,
               r.uniform("blood_hu", 35, 50), T["blood"], (T["lung"],))
        _tubes(c, r, f"airways_{name}", z, 50, (lx, ly, la, lb), 300.0,
               lambda rho, u: 0.8 + 3.5 * (1 - rho) ** 2 * u, -990.0, T["airway"],
               (T["lung"],), wall=(0.8, 20.0))
    # Gravity: lung denser posteriorly.
    lung = c.labels == T["lung"]
    c.hu[lung] += (r.uniform("lung_gradient", 30, 80) * (c.axis[:, None] - cy + cb) / (2 * cb)
                   * np.ones((1, c.size)))[lung]
    _spheres(c, r, "nodules", z, int(r.uniform("nodules", 0, 3)), (-0.47 * ca, cy, 0.4 * ca,
             0.8 * cb), (0, 300), (2.0, 6.0), lambda g: g.uniform(850, 920), (T["lung"],))
    _spheres(c, r, "nodules_left", z, int(r.uniform("nodules_left", 0, 2)),
             (0.47 * ca, cy, 0.4 * ca, 0.8 * cb), (0, 300), (2.0, 5.0),
             lambda g: g.uniform(850, 920), (T["lung"],))
    # Mediastinum: fat, great vessels, airway, oesophagus, heart.
    c.ellipse(r.smooth("med_x", z, 3), cy - 0.2 * cb, 0.2 * ca, 0.62 * cb * size, -90.0,
              T["visceral"], 0.0, r.wobble("mediastinum", z, 0.08))
    blood = r.uniform("blood_hu", 35, 50)
    ap = cy + cb - 32
    c.ellipse(18 + r.smooth("aorta_x", z, 2), ap, 11.5, 11.5, blood, T["blood"])
    if t < 0.4:
        tx = r.smooth("trachea_x", z, 2)
        _ring(c, tx, cy + 0.05 * cb, 10, 9, 2.0, 40.0, -1000.0, T["muscle"], T["airway"])
    elif t < 0.52:
        for side in (-1, 1):
            _ring(c, side * 17, cy + 0.08 * cb, 7, 6.5, 1.5, 40.0, -1000.0, T["muscle"],
                  T["airway"], side * 0.5)
    c.ellipse(8, cy + 0.45 * cb, 8, 6, 45.0, T["muscle"])
    if 0.2 < t < 0.3:
        c.ellipse(4, cy - 0.15 * cb, 12, 0.35 * cb, blood, T["blood"], -0.4)
    if 0.28 < t < 0.6:
        c.ellipse(6, cy - 0.3 * cb, 14, 14, blood, T["blood"])
        c.ellipse(-24, cy - 0.24 * cb, 9, 9, blood, T["blood"])
    if 0.38 < t < 0.52:
        c.ellipse(28, cy - 0.25 * cb, 13, 13, blood, T["blood"])
    heart = _g(t, 0.78, 0.36)
    if heart > 0:
        hx, hy = 0.16 * ca + r.smooth("heart_x", z, 3), cy - 0.12 * cb
        hh = r.wobble("heart", z, 0.06)
        c.ellipse(hx, hy, 0.45 * ca * heart + 4, 0.5 * cb * heart + 4, -95.0, T["fat"], -0.5, hh)
        c.ellipse(hx, hy, 0.45 * ca * heart, 0.5 * cb * heart, r.uniform("heart_hu", 38, 48),
                  T["heart"], -0.5, hh)
    dome = min(1.0, max(0.0, (t - 0.8) / 0.2)) ** 0.7
    if dome > 0:   # liver dome under the right lung, spleen/stomach on the left
        c.ellipse(-0.45 * ca, cy + 0.35 * cb, 0.5 * ca * dome, 0.6 * cb * dome, 60.0, T["liver"],
                  0.0, r.wobble("liver_dome", z, 0.05))
        c.ellipse(0.5 * ca, cy + 0.45 * cb, 0.3 * ca * dome, 0.35 * cb * dome, 48.0, T["spleen"])
    _spine(c, r, z, r.smooth("spine_x", z, 1.5), cy + cb - 8, 0.95)
    if 0.08 < t < 0.85:
        _ring(c, 0.0, cy - cb - 6, 14, 6, 1.5, 700.0, 250.0, T["bone"], T["marrow"])
    if t < 0.5:   # scapulae, outside the ribs
        for side in (-1, 1):
            c.ellipse(side * 0.62 * a, cy + cb + 2, 40 * (1 - t / 0.5) ** 0.5 + 1, 3.5, 700.0,
                      T["bone"], side * 0.6)
    _ribs(c, r, z, cav)


def abdomen(c: Canvas, r: PatientRandom, z: float, t: float) -> None:
    a, cav = _trunk(c, r, z, (140, 172), (100, 128), (10, 38), (8, 13))
    _, cy, ca, cb, _ = cav
    enhanced = r.uniform("contrast", 0, 1) < 0.7
    liver_hu = r.uniform("liver_hu", 95, 120) if enhanced else r.uniform("liver_hu", 52, 66)
    aorta_hu = r.uniform("aorta_hu", 140, 200) if enhanced else 42.0
    fat = (T["visceral"],)
    spine_y = cy + cb - 16
    for side in (-1, 1):   # psoas, growing downwards
        p = min(1.0, max(0.0, (t - 0.35) / 0.5))
        if p > 0:
            c.ellipse(side * (26 + 10 * p), spine_y - 8, 8 + 12 * p, 10 + 8 * p, 50.0,
                      T["muscle"], side * 0.4, inside=fat)
    liver = max(0.15, 1.0 - 1.1 * max(0.0, t - 0.3)) if t < 0.85 else 0.0
    host = (-0.36 * ca, cy - 0.08 * cb, 0.62 * ca * liver, 0.8 * cb * liver)
    if liver > 0:
        c.ellipse(*host, liver_hu, T["liver"], 0.3, r.wobble("liver", z, 0.09), inside=fat)
        _tubes(c, r, "hepatic_vessels", z, 60, host, 250.0, lambda rho, u: 1.5 + 4 * u * (1 - rho),
               aorta_hu * 0.9 if enhanced else 38.0, T["blood"], (T["liver"],), slope_mm=1.0)
        if 0.25 < t < 0.5:
            c.ellipse(host[0] + 0.3 * host[2], host[1] - 0.2 * host[3], 12, 20, 10.0, T["bowel"],
                      0.5, inside=(T["liver"],))
        _spheres(c, r, "liver_lesions", z, int(r.uniform("lesions", 1, 5)), host, (0, 200),
                 (3.0, 11.0), lambda g: g.uniform(-45, -12) if g.uniform() < 0.8
                 else g.uniform(10, 25), (T["liver"], T["blood"]))
    spleen = _g(t, 0.15, 0.35)
    if spleen > 0:
        c.ellipse(0.58 * ca, cy + 0.35 * cb, 0.22 * ca * spleen, 0.4 * cb * spleen,
                  liver_hu - 8, T["spleen"], 0.6, r.wobble("spleen", z, 0.08), inside=fat)
    stomach = _g(t, 0.1, 0.35)
    if stomach > 0:
        sx, sy, sa, sb = 0.3 * ca, cy - 0.35 * cb, 0.3 * ca * stomach, 0.3 * cb * stomach
        sh = r.wobble("stomach", z, 0.1)
        c.ellipse(sx, sy, sa + 3, sb + 3, 60.0, T["bowel"], 0.2, sh, inside=fat)
        c.ellipse(sx, sy, sa, sb, 20.0, T["bowel"], 0.2, sh, inside=fat + (T["bowel"],))
        c.ellipse(sx, sy - 0.75 * sb, 0.9 * sa, 0.45 * sb, -1000.0, T["gas"],
                  inside=(T["bowel"],))
    if 0.3 < t < 0.5:   # pancreas
        c.ellipse(0.05 * ca, cy + 0.15 * cb, 0.3 * ca, 9, 90.0 if enhanced else 42.0,
                  T["spleen"], -0.25, r.wobble("pancreas", z, 0.1), inside=fat)
    kidney = _g(t, 0.55, 0.25)
    if kidney > 0:
        for side in (-1, 1):
            kx, ky = side * 0.4 * ca, spine_y - 5
            ka, kb, ang = 24 * kidney, 34 * kidney, side * 0.5
            c.ellipse(kx, ky, ka, kb, 165.0 if enhanced else 32.0, T["kidney"], ang,
                      r.wobble(f"kidney{side}", z, 0.06), inside=fat)
            c.ellipse(kx, ky, 0.6 * ka, 0.65 * kb, 135.0 if enhanced else 30.0, T["kidney"], ang)
            c.ellipse(kx - side * 0.5 * ka, ky, 0.3 * ka, 0.35 * kb, -80.0, T["fat"], ang)
    c.ellipse(14, spine_y - 28, 11, 11, aorta_hu, T["blood"])
    c.ellipse(-22, spine_y - 27, 13, 10, aorta_hu * 0.75 if enhanced else 40.0, T["blood"])
    bowel_wall = 70.0 if enhanced else 40.0
    contents = r.rng("bowel_contents").choice([20.0, -1000.0, -150.0], 80, p=[0.6, 0.15, 0.25])
    _tubes(c, r, "bowel", z, 80, (0.0, cy - 0.1 * cb, 0.85 * ca, 0.75 * cb), 250.0,
           lambda rho, u: 6 + 8 * u, lambda i: contents[i], T["bowel"], fat,
           slope_mm=1.2, wall=(2.5, bowel_wall))
    for side in (-1, 1):   # colon, laterally
        _tubes(c, r, f"colon{side}", z, 2, (side * 0.72 * ca, cy - 0.05 * cb, 0.1 * ca, 0.2 * cb),
               250.0, lambda rho, u: 16 + 8 * u, -1000.0, T["gas"], fat, slope_mm=0.3,
               wall=(3.0, bowel_wall))
    _spine(c, r, z, r.smooth("spine_x", z, 1.5), spine_y, 1.1)
    if t < 0.35:
        _ribs(c, r, z, cav, lateral_only=True)


def head(c: Canvas, r: PatientRandom, z: float, t: float) -> None:
    s = np.sqrt(max(0.12, 1.0 - ((t - 0.3) / 0.78) ** 2))
    a = r.uniform("head_a", 66, 78) * s
    b = r.uniform("head_b", 84, 98) * s
    cy = r.uniform("head_y", -5, 5)
    harm = r.wobble("head", z, 0.035)
    c.ellipse(0, cy, a, b, 35.0, T["skin"], 0.0, harm)
    scalp = r.uniform("scalp", 4, 6.5)
    thick = r.uniform("skull_mm", 5, 8)
    table = r.uniform("table_hu", 1300, 1800)
    sa, sb = a - scalp, b - scalp
    skull_in = harm + r.wobble("skull", z, 0.02)
    c.ellipse(0, cy, sa, sb, table, T["bone"], 0.0, harm)
    c.ellipse(0, cy, sa - 1.8, sb - 1.8, r.uniform("diploe", 450, 750), T["marrow"], 0.0, harm)
    c.ellipse(0, cy, sa - thick + 1.8, sb - thick + 1.8, table, T["bone"], 0.0, skull_in)
    ba, bb = sa - thick, sb - thick
    c.ellipse(0, cy, ba, bb, 8.0, T["csf"], 0.0, skull_in)
    grey, white = r.uniform("grey_hu", 35, 42), r.uniform("white_hu", 24, 30)
    brain = skull_in + r.wobble("brain", z, 0.015)
    c.ellipse(0, cy, ba - 1.2, bb - 1.2, grey, T["grey"], 0.0, brain)
    c.ellipse(0, cy + 3, (ba - 1.2) * 0.74, (bb - 1.2) * 0.76, white, T["white"], 0.0,
              r.wobble("white", z, 0.1, orders=6), inside=(T["grey"],))
    # Sulci: short radial CSF clefts reaching in from the surface.
    g = r.rng("sulci")
    n = 140
    ang, z0, depth = g.uniform(0, 2 * np.pi, n), g.uniform(-10, 150, n), g.uniform(4, 11, n)
    for i in np.nonzero(np.abs(z - z0) < 9)[0]:
        x, y = (ba - depth[i] / 2) * np.cos(ang[i]), cy + (bb - depth[i] / 2) * np.sin(ang[i])
        c.ellipse(x, y, depth[i] / 2, 0.9, 8.0, T["csf"], ang[i], inside=(T["grey"], T["white"]))
    for sign in (-1, 1):   # interhemispheric fissure with the falx
        c.ellipse(0, cy + sign * 0.6 * bb, 1.6, 0.38 * bb, 8.0, T["csf"],
                  inside=(T["grey"], T["white"]))
        c.ellipse(0, cy + sign * 0.6 * bb, 0.5, 0.36 * bb, 55.0, T["dura"], inside=(T["csf"],))
    deep = _g(t, 0.45, 0.12)
    if deep > 0:   # basal ganglia and thalami
        for side in (-1, 1):
            c.ellipse(side * 17, cy - 4, 6 * deep, 13 * deep, grey - 2, T["grey"], side * -0.3,
                      inside=(T["white"],))
            c.ellipse(side * 10, cy + 11, 8 * deep, 10 * deep, grey - 2, T["grey"],
                      inside=(T["white"], T["grey"]))
    vent = _g(t, 0.5, 0.17)
    if vent > 0:
        w = r.uniform("ventricle_w", 0.8, 1.5)
        for side in (-1, 1):
            c.ellipse(side * (5 + 3 * vent), cy - 6, (3 + 3 * vent) * w, 22 * vent, 8.0, T["csf"],
                      side * 0.15, r.wobble(f"ventricle{side}", z, 0.1),
                      inside=(T["white"], T["grey"]))
            if vent > 0.4:
                c.ellipse(side * 13, cy + 26, 3.5 * w, 9 * vent, 8.0, T["csf"], side * -0.5,
                          inside=(T["white"], T["grey"]))
                if r.uniform(f"plexus{side}", 0, 1) < 0.6:
                    c.ellipse(side * 13, cy + 26, 2.2, 2.2, 110.0, T["bone"], inside=(T["csf"],))
    if 0.33 < t < 0.5:
        c.ellipse(0, cy + 4, 1.6, 8, 8.0, T["csf"], inside=(T["grey"], T["white"]))
        if r.uniform("pineal", 0, 1) < 0.5:
            c.ellipse(0, cy + 17, 2.0, 2.0, 150.0, T["bone"])
    _spheres(c, r, "lacunes", z, int(r.uniform("lacunes", 0, 3)), (0, cy, ba * 0.7, bb * 0.7),
             (20, 120), (2.0, 5.0), lambda g: g.uniform(-14, -6), (T["white"],))
