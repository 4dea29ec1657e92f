package main

import (
	"image"
	"image/color"
	"math"
)

// canvas draws on an RGBA image: thick lines, markers, rectangles and
// bitmap text. Lines and markers can be clipped to a rectangle.
type canvas struct {
	img  *image.RGBA
	clip image.Rectangle // nothing is drawn outside it
	// texts lists every string drawn, so that tests can check that the
	// font has a glyph for each of their characters.
	texts []string
}

func newCanvas(w, h int, bg color.RGBA) *canvas {
	c := &canvas{img: image.NewRGBA(image.Rect(0, 0, w, h))}
	c.clip = c.img.Bounds()
	c.fill(c.clip, bg)
	return c
}

func (c *canvas) set(x, y int, col color.RGBA) {
	if image.Pt(x, y).In(c.clip) {
		c.img.SetRGBA(x, y, col)
	}
}

// fill paints r (clipped).
func (c *canvas) fill(r image.Rectangle, col color.RGBA) {
	r = r.Intersect(c.clip)
	if r.Empty() {
		return
	}
	// Paint the first row, then copy it to the others.
	first := c.img.Pix[c.img.PixOffset(r.Min.X, r.Min.Y):c.img.PixOffset(r.Max.X, r.Min.Y)]
	for i := 0; i < len(first); i += 4 {
		first[i], first[i+1], first[i+2], first[i+3] = col.R, col.G, col.B, col.A
	}
	for y := r.Min.Y + 1; y < r.Max.Y; y++ {
		copy(c.img.Pix[c.img.PixOffset(r.Min.X, y):], first)
	}
}

// frame draws r's outline, width pixels wide, inside r.
func (c *canvas) frame(r image.Rectangle, width int, col color.RGBA) {
	c.fill(image.Rect(r.Min.X, r.Min.Y, r.Max.X, r.Min.Y+width), col)
	c.fill(image.Rect(r.Min.X, r.Max.Y-width, r.Max.X, r.Max.Y), col)
	c.fill(image.Rect(r.Min.X, r.Min.Y, r.Min.X+width, r.Max.Y), col)
	c.fill(image.Rect(r.Max.X-width, r.Min.Y, r.Max.X, r.Max.Y), col)
}

// dot paints the pixels whose centres lie within a disc of the given
// diameter around (cx, cy).
func (c *canvas) dot(cx, cy, diameter float64, col color.RGBA) {
	c.shape(cx, cy, diameter/2, markCircle, col)
}

// line draws a line width pixels wide from (x0, y0) to (x1, y1), with
// round ends, by painting discs along it.
func (c *canvas) line(x0, y0, x1, y1, width float64, col color.RGBA) {
	n := int(math.Ceil(math.Hypot(x1-x0, y1-y0)*2)) + 1
	for i := 0; i <= n; i++ {
		t := float64(i) / float64(n)
		c.dot(x0+(x1-x0)*t, y0+(y1-y0)*t, width, col)
	}
}

// dashedLine draws a line 1 pixel wide, dash pixels on and dash off.
func (c *canvas) dashedLine(x0, y0, x1, y1, dash float64, col color.RGBA) {
	length := math.Hypot(x1-x0, y1-y0)
	for s := 0.0; s < length; s += 2 * dash {
		e := math.Min(s+dash, length)
		for d := s; d <= e; d += 0.5 {
			t := d / length
			c.set(int(x0+(x1-x0)*t), int(y0+(y1-y0)*t), col)
		}
	}
}

// A marker shape, told apart from the others without its colour.
type marker int

const (
	markCircle marker = iota
	markSquare
	markDiamond
	markTriangle
	markTriangleDown
	markers // how many there are
)

// inside says whether (dx, dy), relative to a marker's centre, is inside
// the shape of radius r.
func (m marker) inside(dx, dy, r float64) bool {
	switch m {
	case markSquare:
		return math.Abs(dx) <= r*0.85 && math.Abs(dy) <= r*0.85
	case markDiamond:
		return math.Abs(dx)+math.Abs(dy) <= r*1.2
	case markTriangle:
		return dy <= r*0.8 && math.Abs(dx) <= (dy+r*1.1)*0.6
	case markTriangleDown:
		return markTriangle.inside(dx, -dy, r)
	default:
		return dx*dx+dy*dy <= r*r
	}
}

// shape paints marker m of radius r centred on (cx, cy).
func (c *canvas) shape(cx, cy, r float64, m marker, col color.RGBA) {
	x0, x1 := int(math.Floor(cx-r-1)), int(math.Ceil(cx+r+1))
	y0, y1 := int(math.Floor(cy-r-1)), int(math.Ceil(cy+r+1))
	for y := y0; y <= y1; y++ {
		for x := x0; x <= x1; x++ {
			if m.inside(float64(x)+0.5-cx, float64(y)+0.5-cy, r) {
				c.set(x, y, col)
			}
		}
	}
}

// point draws a data point: marker m of radius r with a white rim, so that
// points on top of each other stay apart.
func (c *canvas) point(cx, cy, r float64, m marker, col color.RGBA) {
	c.shape(cx, cy, r+1.5, m, white)
	c.shape(cx, cy, r, m, col)
}

// Where text goes relative to the point it is drawn at.
type align int

const (
	alignLeft align = iota
	alignCenter
	alignRight
)

// text draws s with its top-left, top-centre or top-right corner (by a) at
// (x, y), each glyph pixel as a scale×scale square. It returns the width
// drawn. Text is never clipped.
func (c *canvas) text(x, y int, s string, scale int, a align, col color.RGBA) int {
	c.texts = append(c.texts, s)
	w := textWidth(s, scale)
	switch a {
	case alignCenter:
		x -= w / 2
	case alignRight:
		x -= w
	}
	for _, r := range s {
		g := glyphFor(r)
		for gy, bits := range g {
			for gx := 0; gx < glyphW; gx++ {
				if bits&(1<<(glyphW-1-gx)) != 0 {
					c.square(x+gx*scale, y+gy*scale, scale, col)
				}
			}
		}
		x += (glyphW + glyphGap) * scale
	}
	return w
}

// textUp draws s reading upwards (turned a quarter left), centred on y,
// with the glyphs' tops at x.
func (c *canvas) textUp(x, y int, s string, scale int, col color.RGBA) {
	c.texts = append(c.texts, s)
	y += textWidth(s, scale) / 2
	for _, r := range s {
		g := glyphFor(r)
		for gy, bits := range g {
			for gx := 0; gx < glyphW; gx++ {
				if bits&(1<<(glyphW-1-gx)) != 0 {
					c.square(x+gy*scale, y-(gx+1)*scale, scale, col)
				}
			}
		}
		y -= (glyphW + glyphGap) * scale
	}
}

// square paints a size×size square with its top-left at (x, y), ignoring
// the clip rectangle (text is drawn in the margins).
func (c *canvas) square(x, y, size int, col color.RGBA) {
	r := image.Rect(x, y, x+size, y+size).Intersect(c.img.Bounds())
	for py := r.Min.Y; py < r.Max.Y; py++ {
		for px := r.Min.X; px < r.Max.X; px++ {
			c.img.SetRGBA(px, py, col)
		}
	}
}
