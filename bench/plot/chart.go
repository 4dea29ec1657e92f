package main

import (
	"image"
	"image/color"
	"math"
	"strconv"
	"strings"
)

// Size of every plot, in pixels.
const (
	plotW = 1100
	plotH = 700
)

// Text sizes: each glyph pixel is drawn as a scale×scale square.
const (
	titleScale = 3
	textScale  = 2
)

var (
	white     = color.RGBA{255, 255, 255, 255}
	black     = color.RGBA{0, 0, 0, 255}
	ink       = color.RGBA{40, 40, 40, 255}    // axes, labels, titles
	subtle    = color.RGBA{100, 100, 100, 255} // subtitle, legend frame
	gridColor = color.RGBA{225, 225, 225, 255}
)

// axis maps values onto one side of the plot area.
type axis struct {
	title  string
	lo, hi float64 // the values at the two ends
	log    bool    // log10 scale (lo > 0)
	ticks  []tick
	// breakAt, when not NaN, is a value between two ticks where the axis
	// is not to scale: it is drawn broken there.
	breakAt float64
}

type tick struct {
	v     float64
	label string
}

// frac is where v falls between the ends of the axis, 0 to 1.
func (a axis) frac(v float64) float64 {
	if a.log {
		return (math.Log10(v) - math.Log10(a.lo)) / (math.Log10(a.hi) - math.Log10(a.lo))
	}
	return (v - a.lo) / (a.hi - a.lo)
}

// A series is one config's line.
type series struct {
	name  string
	style style
	pts   []xy // in increasing x
}

type xy struct{ x, y float64 }

// chart is one plot, ready to draw.
type chart struct {
	title, subtitle string
	x, y            axis
	series          []series
}

// layout is where the parts of a drawn chart are.
type layout struct {
	plot   image.Rectangle // inside the axes
	legend image.Rectangle
}

// Pixel sizes of the parts of a chart.
const (
	margin     = 24 // between the image's edge and anything drawn
	tickLen    = 7
	legendPad  = 14 // inside the legend's frame
	legendRow  = 32
	legendLine = 44 // length of the line sample in the legend
)

func (ch *chart) draw() (*canvas, layout) {
	c := newCanvas(plotW, plotH, white)
	var lay layout

	// Title and subtitle, top left.
	top := margin
	c.text(margin, top, ch.title, titleScale, alignLeft, ink)
	top += textHeight(titleScale) + 4
	if ch.subtitle != "" {
		c.text(margin, top, ch.subtitle, textScale, alignLeft, subtle)
		top += textHeight(textScale)
	}
	top += 24

	// Legend, right; its height follows its rows.
	nameW := 0
	for _, s := range ch.series {
		nameW = max(nameW, textWidth(s.name, textScale))
	}
	legendW := 2*legendPad + legendLine + 12 + nameW
	lay.legend = image.Rect(plotW-margin-legendW, top, plotW-margin, top+2*legendPad+len(ch.series)*legendRow-(legendRow-textHeight(textScale)))

	// Plot area: what is left after the y labels and title on the left,
	// the x labels and title below, and the legend on the right.
	labelW := 0
	for _, t := range ch.y.ticks {
		labelW = max(labelW, textWidth(t.label, textScale))
	}
	left := margin + textHeight(textScale) + 18 + labelW + tickLen + 6
	bottom := plotH - margin - textHeight(textScale) - 14 - textHeight(textScale) - tickLen - 6
	lay.plot = image.Rect(left, top, lay.legend.Min.X-36, bottom)
	p := lay.plot
	px := func(v float64) float64 { return float64(p.Min.X) + ch.x.frac(v)*float64(p.Dx()) }
	py := func(v float64) float64 { return float64(p.Max.Y) - ch.y.frac(v)*float64(p.Dy()) }

	// Grid, then axes with their ticks and labels.
	for _, t := range ch.x.ticks {
		x := int(math.Round(px(t.v)))
		c.fill(image.Rect(x, p.Min.Y, x+1, p.Max.Y), gridColor)
	}
	for _, t := range ch.y.ticks {
		y := int(math.Round(py(t.v)))
		c.fill(image.Rect(p.Min.X, y, p.Max.X, y+1), gridColor)
	}
	c.fill(image.Rect(p.Min.X-2, p.Min.Y, p.Min.X, p.Max.Y+2), ink)
	c.fill(image.Rect(p.Min.X-2, p.Max.Y, p.Max.X, p.Max.Y+2), ink)
	lastRight := math.MinInt
	for _, t := range ch.x.ticks {
		x := int(math.Round(px(t.v)))
		c.fill(image.Rect(x-1, p.Max.Y+2, x+1, p.Max.Y+2+tickLen), ink)
		// Leave out a label that would run into the one before it.
		if w := textWidth(t.label, textScale); x-w/2 > lastRight+10 {
			c.text(x, p.Max.Y+2+tickLen+6, t.label, textScale, alignCenter, ink)
			lastRight = x + w/2
		}
	}
	for _, t := range ch.y.ticks {
		y := int(math.Round(py(t.v)))
		c.fill(image.Rect(p.Min.X-2-tickLen, y-1, p.Min.X-2, y+1), ink)
		c.text(p.Min.X-2-tickLen-6, y-capHeight(textScale)/2, t.label, textScale, alignRight, ink)
	}
	if !math.IsNaN(ch.x.breakAt) {
		// Two slashes across a gap in the x axis.
		x := px(ch.x.breakAt)
		y := float64(p.Max.Y) + 1
		c.fill(image.Rect(int(x)-5, p.Max.Y-3, int(x)+6, p.Max.Y+5), white)
		for _, dx := range []float64{-4, 4} {
			c.line(x+dx-3, y+7, x+dx+3, y-7, 2, ink)
		}
	}
	c.text((p.Min.X+p.Max.X)/2, plotH-margin-textHeight(textScale), ch.x.title, textScale, alignCenter, ink)
	c.textUp(margin, (p.Min.Y+p.Max.Y)/2, ch.y.title, textScale, ink)

	// Series: lines first, then every point on top, both clipped to the
	// plot area widened by a point's size so edge points show whole.
	c.clip = p.Inset(-8)
	for _, s := range ch.series {
		for i := 1; i < len(s.pts); i++ {
			a, b := s.pts[i-1], s.pts[i]
			c.line(px(a.x), py(a.y), px(b.x), py(b.y), s.style.width, s.style.col)
		}
	}
	for _, s := range ch.series {
		for _, pt := range s.pts {
			c.point(px(pt.x), py(pt.y), s.style.radius, s.style.mark, s.style.col)
		}
	}
	c.clip = c.img.Bounds()

	// Legend: a sample of each line, with its point, and the config's name.
	c.fill(lay.legend, white)
	c.frame(lay.legend, 1, subtle)
	y := lay.legend.Min.Y + legendPad
	for _, s := range ch.series {
		x0 := float64(lay.legend.Min.X + legendPad)
		mid := float64(y) + float64(capHeight(textScale))/2
		c.line(x0, mid, x0+legendLine, mid, s.style.width+1, s.style.col)
		c.point(x0+legendLine/2, mid, s.style.radius, s.style.mark, s.style.col)
		c.text(lay.legend.Min.X+legendPad+legendLine+12, y, s.name, textScale, alignLeft, ink)
		y += legendRow
	}
	return c, lay
}

// niceStep is the smallest step of 1, 2 or 5 times a power of ten that
// cuts span into at most n steps.
func niceStep(span float64, n int) float64 {
	if span <= 0 {
		return 1
	}
	raw := span / float64(n)
	pow := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*pow >= raw*(1-1e-9) {
			return m * pow
		}
	}
	return 10 * pow
}

// linearAxis runs from 0 to a round value at or above top, with ticks at
// round steps labelled by format.
func linearAxis(title string, top float64) axis {
	if top <= 0 {
		top = 1
	}
	step := niceStep(top, 6)
	hi := step * math.Ceil(top*1.02/step-1e-9)
	a := axis{title: title, lo: 0, hi: hi, breakAt: math.NaN()}
	decimals := max(0, -int(math.Floor(math.Log10(step)+1e-9)))
	for i := 0; float64(i)*step <= hi*(1+1e-9); i++ {
		v := float64(i) * step
		a.ticks = append(a.ticks, tick{v, formatNumber(v, decimals)})
	}
	return a
}

// logAxis runs from a tick at or below lo to one at or above hi on a log
// scale, with ticks at 1, 2 and 5 times the powers of ten (or only at the
// powers of ten when the range spans more than three decades).
func logAxis(title string, lo, hi float64) axis {
	a := axis{title: title, log: true, breakAt: math.NaN()}
	mults := []float64{1, 2, 5}
	if math.Log10(hi/lo) > 3 {
		mults = []float64{1}
	}
	var vals []float64
	for e := math.Floor(math.Log10(lo)); ; e++ {
		for _, m := range mults {
			vals = append(vals, m*math.Pow(10, e))
		}
		if vals[len(vals)-1] >= hi {
			break
		}
	}
	// Keep the last tick at or below lo and the first at or above hi.
	first, last := 0, len(vals)-1
	for i, v := range vals {
		if v <= lo*(1+1e-9) {
			first = i
		}
		if v >= hi*(1-1e-9) && i < last {
			last = i
		}
	}
	for _, v := range vals[first : last+1] {
		decimals := max(0, -int(math.Floor(math.Log10(v)+1e-9)))
		a.ticks = append(a.ticks, tick{v, formatNumber(v, decimals)})
	}
	a.lo, a.hi = vals[first], vals[last]
	return a
}

// formatNumber writes v with the given decimals, and commas between
// thousands: 12,500 or 0.25; 0 is always "0".
func formatNumber(v float64, decimals int) string {
	if v == 0 {
		return "0"
	}
	s := strconv.FormatFloat(v, 'f', decimals, 64)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	whole, frac, _ := strings.Cut(s, ".")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, d := range whole {
		if i > 0 && (len(whole)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(d)
	}
	if frac != "" {
		b.WriteByte('.')
		b.WriteString(frac)
	}
	return b.String()
}
